//! Shared subscription filters (`$share/{ShareName}/{filter}`, MQTT 5 section 4.8.2).

use super::validate::{validate_filter, TopicError};

/// The prefix that marks a shared subscription.
pub const SHARED_PREFIX: &str = "$share/";

/// A shared subscription filter split into its share name and topic filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedFilter<'a> {
    /// The share name (group).
    pub group: &'a str,
    /// The topic filter the group subscribes to.
    pub filter: &'a str,
}

/// Splits `$share/group/filter`. `None` for an ordinary filter; an error when the share name is
/// empty `[MQTT-4.8.2-1]` or holds `+`/`#`, or no `/` and valid topic filter follow it
/// `[MQTT-4.8.2-2]`.
pub fn parse_shared(filter: &str) -> Option<Result<SharedFilter<'_>, TopicError>> {
    let rest = filter.strip_prefix(SHARED_PREFIX)?;
    let Some((group, inner)) = rest.split_once('/') else {
        return Some(Err(TopicError::BadSharedSubscription));
    };
    if group.is_empty() || group.contains(['+', '#']) {
        return Some(Err(TopicError::BadSharedSubscription));
    }
    Some(validate_filter(inner).map(|()| SharedFilter {
        group,
        filter: inner,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_filters() {
        assert_eq!(parse_shared("a/b"), None);
        assert_eq!(
            parse_shared("$share/g/a/+"),
            Some(Ok(SharedFilter {
                group: "g",
                filter: "a/+"
            }))
        );
        // [MQTT-4.8.2-1] a share name of at least one character, no wildcards.
        assert!(matches!(parse_shared("$share//a"), Some(Err(_))));
        assert!(matches!(parse_shared("$share/g+/a"), Some(Err(_))));
        // [MQTT-4.8.2-2] a topic filter must follow.
        assert!(matches!(parse_shared("$share/g"), Some(Err(_))));
        assert!(matches!(parse_shared("$share/g/"), Some(Err(_))));
        assert!(matches!(parse_shared("$share/g/a/#/b"), Some(Err(_))));
    }
}
