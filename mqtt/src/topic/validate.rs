//! Validation of topic names (what a PUBLISH carries) and topic filters (what a SUBSCRIBE carries).

use thiserror::Error;

/// Why a topic name or topic filter is not acceptable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum TopicError {
    /// Zero-length topic names and filters are not allowed `[MQTT-4.7.3-1]`.
    #[error("topic is empty")]
    Empty,
    /// The string contains U+0000 `[MQTT-4.7.3-2]`.
    #[error("topic contains the null character")]
    NullCharacter,
    /// A topic name (PUBLISH) must not contain `+` or `#` `[MQTT-3.3.2-2]`.
    #[error("topic name contains a wildcard")]
    WildcardInName,
    /// `#` must stand alone as the last level `[MQTT-4.7.1-2]`.
    #[error("'#' must be the last level and stand alone")]
    BadMultiLevelWildcard,
    /// `+` must occupy a whole level `[MQTT-4.7.1-3]`.
    #[error("'+' must occupy a whole level")]
    BadSingleLevelWildcard,
    /// Longer than the 65535 bytes an MQTT string can hold `[MQTT-4.7.3-3]`.
    #[error("topic is longer than 65535 bytes")]
    TooLong,
    /// A `$share/` filter without a valid share name and topic filter `[MQTT-4.8.2-1]`
    /// `[MQTT-4.8.2-2]`.
    #[error("shared subscription needs $share/<name>/<filter>, the name without wildcards")]
    BadSharedSubscription,
}

const MAX_TOPIC_BYTES: usize = 65_535;

fn validate_common(topic: &str) -> Result<(), TopicError> {
    if topic.is_empty() {
        return Err(TopicError::Empty);
    }
    if topic.len() > MAX_TOPIC_BYTES {
        return Err(TopicError::TooLong);
    }
    if topic.contains('\0') {
        return Err(TopicError::NullCharacter);
    }
    Ok(())
}

/// Checks a topic name as carried by PUBLISH (and a will topic): non-empty, no wildcards, no U+0000.
pub fn validate_topic_name(topic: &str) -> Result<(), TopicError> {
    validate_common(topic)?;
    if topic.bytes().any(|b| b == b'+' || b == b'#') {
        return Err(TopicError::WildcardInName);
    }
    Ok(())
}

/// Checks a topic filter as carried by SUBSCRIBE / UNSUBSCRIBE: non-empty, no U+0000, `+` only as a
/// whole level, `#` only as the whole last level.
pub fn validate_filter(filter: &str) -> Result<(), TopicError> {
    validate_common(filter)?;
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        let is_last = levels.peek().is_none();
        if level.contains('#') && (level != "#" || !is_last) {
            return Err(TopicError::BadMultiLevelWildcard);
        }
        if level.contains('+') && level != "+" {
            return Err(TopicError::BadSingleLevelWildcard);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names() {
        assert_eq!(validate_topic_name("a/b/c"), Ok(()));
        assert_eq!(validate_topic_name("/"), Ok(()));
        assert_eq!(validate_topic_name("é/ü"), Ok(()));
        assert_eq!(validate_topic_name(""), Err(TopicError::Empty));
        assert_eq!(validate_topic_name("a/+"), Err(TopicError::WildcardInName));
        assert_eq!(validate_topic_name("a/#"), Err(TopicError::WildcardInName));
        assert_eq!(validate_topic_name("a\0b"), Err(TopicError::NullCharacter));
    }

    #[test]
    fn filters() {
        for ok in [
            "#", "+", "a/#", "a/+/b", "+/+", "/#", "$SYS/#", "a//b", "+/",
        ] {
            assert_eq!(validate_filter(ok), Ok(()), "{ok}");
        }
        assert_eq!(validate_filter(""), Err(TopicError::Empty));
        assert_eq!(
            validate_filter("a/#/b"),
            Err(TopicError::BadMultiLevelWildcard)
        );
        assert_eq!(
            validate_filter("a#"),
            Err(TopicError::BadMultiLevelWildcard)
        );
        assert_eq!(
            validate_filter("a+/b"),
            Err(TopicError::BadSingleLevelWildcard)
        );
        assert_eq!(
            validate_filter("a/b+"),
            Err(TopicError::BadSingleLevelWildcard)
        );
    }
}
