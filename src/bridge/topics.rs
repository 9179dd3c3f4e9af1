//! A bridge's topic mapping: which filters it subscribes to on each side, and how a topic read on
//! one side is named on the other (`local_prefix` + rest <-> `remote_prefix` + rest).

use switchboard_actors::QoS;

use super::config::BridgeTopic;
use crate::topic::filter_matches;

/// One `topics` entry, ready for matching.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Route {
    local_filter: String,
    remote_filter: String,
    local_prefix: String,
    remote_prefix: String,
    qos: QoS,
    outgoing: bool,
    incoming: bool,
}

/// The mapping of one bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicMap {
    routes: Vec<Route>,
}

fn qos_of(level: u8) -> QoS {
    match level {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

impl TopicMap {
    /// The mapping of these (checked) entries.
    pub fn new(topics: &[BridgeTopic]) -> Self {
        let routes = topics
            .iter()
            .map(|t| Route {
                local_filter: format!("{}{}", t.local_prefix, t.pattern),
                remote_filter: format!("{}{}", t.remote_prefix, t.pattern),
                local_prefix: t.local_prefix.clone(),
                remote_prefix: t.remote_prefix.clone(),
                qos: qos_of(t.qos),
                outgoing: t.direction.outgoing(),
                incoming: t.direction.incoming(),
            })
            .collect();
        TopicMap { routes }
    }

    /// What the bridge subscribes to on this broker: the filters of `out` and `both` entries.
    pub fn local_subscriptions(&self) -> Vec<(String, QoS)> {
        dedup(
            self.routes
                .iter()
                .filter(|r| r.outgoing)
                .map(|r| (r.local_filter.clone(), r.qos)),
        )
    }

    /// What the bridge subscribes to on the remote: the filters of `in` and `both` entries.
    pub fn remote_subscriptions(&self) -> Vec<(String, QoS)> {
        dedup(
            self.routes
                .iter()
                .filter(|r| r.incoming)
                .map(|r| (r.remote_filter.clone(), r.qos)),
        )
    }

    /// The remote topic of a message read here, by the first outgoing entry that matches it.
    pub fn to_remote(&self, local_topic: &str) -> Option<String> {
        self.routes
            .iter()
            .filter(|r| r.outgoing && filter_matches(&r.local_filter, local_topic))
            .find_map(|r| {
                let rest = local_topic.strip_prefix(r.local_prefix.as_str())?;
                Some(format!("{}{rest}", r.remote_prefix))
            })
    }

    /// The local topic of a message read from the remote, by the first incoming entry that
    /// matches it.
    pub fn to_local(&self, remote_topic: &str) -> Option<String> {
        self.routes
            .iter()
            .filter(|r| r.incoming && filter_matches(&r.remote_filter, remote_topic))
            .find_map(|r| {
                let rest = remote_topic.strip_prefix(r.remote_prefix.as_str())?;
                Some(format!("{}{rest}", r.local_prefix))
            })
    }
}

/// The filters once each, at the highest QoS asked for.
fn dedup(filters: impl Iterator<Item = (String, QoS)>) -> Vec<(String, QoS)> {
    let mut out: Vec<(String, QoS)> = Vec::new();
    for (filter, qos) in filters {
        match out.iter_mut().find(|(f, _)| *f == filter) {
            Some(existing) => existing.1 = existing.1.max(qos),
            None => out.push((filter, qos)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bridge::config::Direction;

    fn topic(pattern: &str, direction: Direction, local: &str, remote: &str) -> BridgeTopic {
        BridgeTopic {
            pattern: pattern.into(),
            direction,
            qos: 1,
            local_prefix: local.into(),
            remote_prefix: remote.into(),
        }
    }

    #[test]
    fn the_issue_example_maps_both_ways() {
        let map = TopicMap::new(&[
            topic("detrd/status/response/#", Direction::Out, "", ""),
            topic("detrd/status/request/#", Direction::In, "", ""),
            topic("gate/#", Direction::Both, "", "site/1AB/"),
        ]);
        assert_eq!(
            map.local_subscriptions(),
            vec![
                ("detrd/status/response/#".to_string(), QoS::AtLeastOnce),
                ("gate/#".to_string(), QoS::AtLeastOnce)
            ]
        );
        assert_eq!(
            map.remote_subscriptions(),
            vec![
                ("detrd/status/request/#".to_string(), QoS::AtLeastOnce),
                ("site/1AB/gate/#".to_string(), QoS::AtLeastOnce)
            ]
        );
        assert_eq!(
            map.to_remote("gate/1/state").as_deref(),
            Some("site/1AB/gate/1/state")
        );
        assert_eq!(
            map.to_local("site/1AB/gate/1/cmd").as_deref(),
            Some("gate/1/cmd")
        );
        assert_eq!(
            map.to_remote("detrd/status/response/7").as_deref(),
            Some("detrd/status/response/7")
        );
        // An `in` entry does not send out, an `out` entry does not take in.
        assert_eq!(map.to_remote("detrd/status/request/7"), None);
        assert_eq!(map.to_local("detrd/status/response/7"), None);
        assert_eq!(
            map.to_local("gate/1/cmd"),
            None,
            "without the remote prefix"
        );
    }

    #[test]
    fn local_prefixes_are_stripped_going_out() {
        let map = TopicMap::new(&[topic("+/state", Direction::Both, "site/", "central/")]);
        assert_eq!(
            map.to_remote("site/gate/state").as_deref(),
            Some("central/gate/state")
        );
        assert_eq!(
            map.to_local("central/gate/state").as_deref(),
            Some("site/gate/state")
        );
        assert_eq!(map.to_remote("gate/state"), None);
    }
}
