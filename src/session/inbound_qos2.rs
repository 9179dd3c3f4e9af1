//! The inbound QoS 2 packet identifiers a Session holds until their PUBREL comes.

use std::collections::HashSet;

/// The packet identifiers of inbound QoS 2 messages whose PUBREL has not come
/// `[MQTT-4.3.3-2]`. The set is allocated with the first one: most devices never publish at
/// QoS 2, and every Session pays for what it holds inline.
/// (Boxed: a set is 48 bytes inline, the box 8.)
#[derive(Debug, Default)]
#[allow(clippy::box_collection)]
pub struct InboundQos2(Option<Box<HashSet<u16>>>);

impl InboundQos2 {
    /// Holds `pid`; false if it was held already.
    pub fn insert(&mut self, pid: u16) -> bool {
        self.0.get_or_insert_with(Box::default).insert(pid)
    }

    /// Lets `pid` go; false if it was not held.
    pub fn remove(&mut self, pid: u16) -> bool {
        self.0.as_deref_mut().is_some_and(|set| set.remove(&pid))
    }

    /// Whether `pid` is held.
    pub fn contains(&self, pid: u16) -> bool {
        self.0.as_deref().is_some_and(|set| set.contains(&pid))
    }

    /// Number of identifiers held.
    pub fn count(&self) -> usize {
        self.0.as_deref().map_or(0, HashSet::len)
    }

    /// The identifiers held, in no order.
    pub fn iter(&self) -> impl Iterator<Item = u16> + '_ {
        self.0.as_deref().into_iter().flatten().copied()
    }

    /// Gives up the identifiers, for the stored session.
    pub fn take(&mut self) -> HashSet<u16> {
        self.0.take().map(|set| *set).unwrap_or_default()
    }

    /// Holds the identifiers of a resumed session.
    pub fn restore(&mut self, pids: HashSet<u16>) {
        self.0 = (!pids.is_empty()).then(|| Box::new(pids));
    }
}
