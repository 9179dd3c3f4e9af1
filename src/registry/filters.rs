//! A client's own list of its subscriptions (filter -> options), as its Registry record keeps
//! it. Devices hold one or a few, so up to [`FEW`] are kept in a vector sized to fit; a client
//! with more (a bridge, a dashboard) gets a map.

use std::collections::HashMap;

use crate::message::SubscriptionOptions;

/// The most subscriptions kept in the vector before moving to a map.
const FEW: usize = 8;

/// Filter -> options, for one client.
#[derive(Debug)]
pub(super) enum Filters {
    /// Up to [`FEW`] entries, in no particular order, with no spare capacity.
    Few(Vec<(String, SubscriptionOptions)>),
    /// More (boxed: every client record pays for this enum's width; a map is 48 bytes inline).
    #[allow(clippy::box_collection)]
    Many(Box<HashMap<String, SubscriptionOptions>>),
}

impl Default for Filters {
    fn default() -> Self {
        Filters::Few(Vec::new())
    }
}

impl Filters {
    /// Number of subscriptions.
    pub fn len(&self) -> usize {
        match self {
            Filters::Few(few) => few.len(),
            Filters::Many(many) => many.len(),
        }
    }

    /// Whether there are no subscriptions.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `filter` is held.
    pub fn contains_key(&self, filter: &str) -> bool {
        match self {
            Filters::Few(few) => few.iter().any(|(f, _)| f == filter),
            Filters::Many(many) => many.contains_key(filter),
        }
    }

    /// Adds `filter` or replaces its options; returns the options replaced.
    pub fn insert(
        &mut self,
        filter: String,
        options: SubscriptionOptions,
    ) -> Option<SubscriptionOptions> {
        match self {
            Filters::Few(few) => {
                if let Some((_, held)) = few.iter_mut().find(|(f, _)| *f == filter) {
                    return Some(std::mem::replace(held, options));
                }
                if few.len() < FEW {
                    few.reserve_exact(1);
                    few.push((filter, options));
                } else {
                    let mut many: HashMap<_, _> = std::mem::take(few).into_iter().collect();
                    many.insert(filter, options);
                    *self = Filters::Many(Box::new(many));
                }
                None
            }
            Filters::Many(many) => many.insert(filter, options),
        }
    }

    /// Removes `filter`; returns its options if it was held.
    pub fn remove(&mut self, filter: &str) -> Option<SubscriptionOptions> {
        match self {
            Filters::Few(few) => {
                let position = few.iter().position(|(f, _)| f == filter)?;
                let (_, options) = few.swap_remove(position);
                few.shrink_to_fit();
                Some(options)
            }
            Filters::Many(many) => many.remove(filter),
        }
    }

    /// The filters, in no particular order.
    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.iter().map(|(filter, _)| filter)
    }

    /// The subscriptions, in no particular order (nothing allocated: a client's are walked
    /// when its session ends).
    pub fn iter(&self) -> Iter<'_> {
        match self {
            Filters::Few(few) => Iter::Few(few.iter()),
            Filters::Many(many) => Iter::Many(many.iter()),
        }
    }

    /// Takes every subscription out, leaving none.
    pub fn drain(&mut self) -> Vec<(String, SubscriptionOptions)> {
        match std::mem::take(self) {
            Filters::Few(few) => few,
            Filters::Many(many) => many.into_iter().collect(),
        }
    }
}

/// Walks a client's [`Filters`].
pub(super) enum Iter<'a> {
    /// Over the vector.
    Few(std::slice::Iter<'a, (String, SubscriptionOptions)>),
    /// Over the map.
    Many(std::collections::hash_map::Iter<'a, String, SubscriptionOptions>),
}

impl<'a> Iterator for Iter<'a> {
    type Item = (&'a String, &'a SubscriptionOptions);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Iter::Few(few) => few.next().map(|(f, o)| (f, o)),
            Iter::Many(many) => many.next(),
        }
    }
}

impl<'a> IntoIterator for &'a Filters {
    type Item = (&'a String, &'a SubscriptionOptions);
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl FromIterator<(String, SubscriptionOptions)> for Filters {
    fn from_iter<I: IntoIterator<Item = (String, SubscriptionOptions)>>(entries: I) -> Self {
        let mut filters = Filters::default();
        for (filter, options) in entries {
            filters.insert(filter, options);
        }
        filters
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::QoS;

    fn options(qos: QoS) -> SubscriptionOptions {
        SubscriptionOptions::qos(qos)
    }

    fn sorted(filters: &Filters) -> Vec<(String, QoS)> {
        let mut all: Vec<_> = filters.iter().map(|(f, o)| (f.clone(), o.qos)).collect();
        all.sort();
        all
    }

    #[test]
    fn few_then_many_with_the_same_answers() {
        let mut filters = Filters::default();
        for n in 0..20u8 {
            let qos = if n % 2 == 0 {
                QoS::AtLeastOnce
            } else {
                QoS::AtMostOnce
            };
            assert_eq!(filters.insert(format!("f/{n}"), options(qos)), None);
            assert_eq!(filters.len(), usize::from(n) + 1);
            assert!(matches!(filters, Filters::Few(_)) == (usize::from(n) < FEW));
            assert_eq!(
                filters
                    .insert(format!("f/{n}"), options(QoS::ExactlyOnce))
                    .map(|o| o.qos),
                Some(qos),
                "a second insert replaces"
            );
        }
        assert!(filters.contains_key("f/19") && !filters.contains_key("f/20"));
        assert_eq!(filters.remove("f/3").map(|o| o.qos), Some(QoS::ExactlyOnce));
        assert_eq!(filters.remove("f/3"), None);
        assert_eq!(filters.keys().count(), 19);
        let drained = filters.drain();
        assert_eq!(drained.len(), 19);
        assert_eq!(filters.len(), 0);
        let rebuilt: Filters = drained.into_iter().take(2).collect();
        assert_eq!(sorted(&rebuilt).len(), 2);
    }

    #[test]
    fn few_holds_no_spare_capacity() {
        let mut filters = Filters::default();
        filters.insert("a".into(), options(QoS::AtMostOnce));
        filters.insert("b".into(), options(QoS::AtMostOnce));
        filters.remove("a");
        let Filters::Few(few) = &filters else {
            panic!("two filters are few");
        };
        assert_eq!(few.capacity(), 1);
        assert_eq!(sorted(&filters), vec![("b".to_string(), QoS::AtMostOnce)]);
    }
}
