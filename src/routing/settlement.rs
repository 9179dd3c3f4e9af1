//! Acknowledgements that need not wait for a sync. With `fsync = "always"`, a publisher's
//! PUBACK waits for the `fdatasync` of the records that keep its message for the persistent
//! sessions it reached, so that a power cut loses nothing acknowledged. When every one of those
//! sessions is connected and its client has acknowledged the message first, the disk has
//! nothing left to keep: the message is where it was going, and a power cut now can at most
//! bring it back once more (a QoS 1 duplicate). A [`Settlement`] counts those deliveries down
//! as their PUBACKs come, and tells the publisher's Session ([`Settled`]) when none is left,
//! so that its acknowledgements go out then, whichever comes first: that, or the sync.
//!
//! Only a burst whose every kept delivery is QoS 1 to a connected client gets one
//! ([`route_burst`](super::route_burst)): a delivery to a client that is not connected, a
//! QoS 2 delivery, an inbound QoS 2 id or a retained message leaves the acknowledgements to the
//! sync, as before. The publisher's Session offers one only while each of its earlier
//! acknowledgements still held waits for a settlement too, a few bursts at most (a client that
//! waits for its PUBACK before it publishes again, or publishes again a little before it), and
//! marks it [`Settlement::released`] when the sync came first, so that the subscribers'
//! PUBACKs do not wake it for nothing.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use actix::prelude::*;

/// Sent by the Session of the subscriber whose PUBACK settled a [`Settlement`], to the
/// publisher's Session that made it: the acknowledgements it held for that burst may go out
/// (in order, after those before them). Handled by the publisher's Session.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct Settled;

/// The kept QoS 1 deliveries of one routed burst that their clients have not acknowledged yet.
/// Made by the publisher's Session, armed by [`route_burst`](super::route_burst) (which
/// counts the deliveries and hands it to each subscriber's Session with them), counted down by
/// those Sessions as PUBACKs come.
pub struct Settlement {
    /// Deliveries not acknowledged yet; 0 before the settlement is armed.
    unacknowledged: AtomicUsize,
    /// The publisher no longer waits for it (the acknowledgements went out after the write):
    /// the last delivery's acknowledgement then tells it nothing.
    released: AtomicBool,
    /// The publisher's Session.
    publisher: Arc<Recipient<Settled>>,
}

impl std::fmt::Debug for Settlement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settlement")
            .field(
                "unacknowledged",
                &self.unacknowledged.load(Ordering::Relaxed),
            )
            .finish()
    }
}

impl Settlement {
    /// A settlement not armed yet, whose end `publisher` hears of.
    pub fn new(publisher: Arc<Recipient<Settled>>) -> Self {
        Settlement {
            unacknowledged: AtomicUsize::new(0),
            released: AtomicBool::new(false),
            publisher,
        }
    }

    /// Counts `deliveries` not yet acknowledged: before any of them is sent.
    pub(crate) fn arm(&self, deliveries: usize) {
        self.unacknowledged.store(deliveries, Ordering::Release);
    }

    /// Whether every delivery counted has been acknowledged (true for one never armed).
    pub fn is_settled(&self) -> bool {
        self.unacknowledged.load(Ordering::Acquire) == 0
    }

    /// The publisher's acknowledgements that waited for this went out without it (what they
    /// waited for was written first): the subscribers' PUBACKs need not tell it any more.
    pub fn released(&self) {
        self.released.store(true, Ordering::Relaxed);
    }

    /// One of the deliveries was acknowledged by its client; the last one tells the publisher,
    /// unless it no longer waits. Called once per delivery (by the subscriber's Session, which
    /// forgets the delivery's part in the settlement as it calls this); more calls than
    /// deliveries change nothing.
    pub fn acknowledged(&self) {
        let counted =
            self.unacknowledged
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| {
                    left.checked_sub(1)
                });
        if counted == Ok(1) && !self.released.load(Ordering::Relaxed) {
            self.publisher.do_send(Settled);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Counts the [`Settled`] it gets; [`Told`] asks how many.
    pub(crate) struct Publisher(usize);

    impl Actor for Publisher {
        type Context = Context<Self>;
    }

    impl Handler<Settled> for Publisher {
        type Result = ();

        fn handle(&mut self, _: Settled, _: &mut Context<Self>) {
            self.0 += 1;
        }
    }

    /// How many [`Settled`] a [`Publisher`] got: answered after every message sent to it
    /// before (its mailbox is in order).
    #[derive(Message)]
    #[rtype(result = "usize")]
    pub(crate) struct Told;

    impl Handler<Told> for Publisher {
        type Result = usize;

        fn handle(&mut self, _: Told, _: &mut Context<Self>) -> usize {
            self.0
        }
    }

    /// A settlement whose publisher is a [`Publisher`].
    pub(crate) fn settlement() -> (Arc<Settlement>, Addr<Publisher>) {
        let publisher = Publisher(0).start();
        let settlement = Settlement::new(Arc::new(publisher.clone().recipient()));
        (Arc::new(settlement), publisher)
    }

    #[actix_rt::test]
    async fn the_last_acknowledgement_tells_the_publisher_once() {
        let (settlement, publisher) = settlement();
        assert!(settlement.is_settled(), "not armed: nothing to wait for");
        settlement.arm(2);
        settlement.acknowledged();
        assert!(!settlement.is_settled());
        assert_eq!(publisher.send(Told).await.ok(), Some(0), "one left");
        settlement.acknowledged();
        assert!(settlement.is_settled());
        // More acknowledgements than deliveries counted change nothing.
        settlement.acknowledged();
        assert!(settlement.is_settled());
        assert_eq!(publisher.send(Told).await.ok(), Some(1), "told once");
    }
}
