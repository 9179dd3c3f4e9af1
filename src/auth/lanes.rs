//! One lane per client address into the Authenticator's queue, so that a flood of CONNECTs
//! from one address cannot hold back everyone else's password checks.
//!
//! The Authenticator's threads take checks first come, first served. Without lanes, a peer that
//! sends guesses over many connections fills that queue, and the first CONNECT of every device
//! not seen since start (a restart's whole fleet) waits behind all of them. With lanes, an
//! address has at most `per_address` checks in the queue at a time (one per Authenticator
//! thread, so one address alone still keeps every thread busy); its further CONNECTs wait in
//! its own lane, in order, and enter as its checks finish. A device from any other address
//! then waits behind at most `per_address` checks of each address that floods, instead of
//! behind every guess. Devices behind one NAT, or a balancer without the PROXY protocol, share
//! one lane: they are checked at the full rate, one lane's worth at a time.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// The lanes of one broker's password checks (see the module doc).
pub struct CheckLanes {
    per_address: usize,
    lanes: Mutex<HashMap<IpAddr, Lane>>,
}

/// The checks of one address: how many hold a place in the queue, and who waits for one.
#[derive(Default)]
struct Lane {
    entered: usize,
    waiting: VecDeque<oneshot::Sender<LanePlace>>,
}

/// A place in the Authenticator's queue for one check from `address`: held while the check is
/// queued or running, and handed to the next CONNECT waiting in the lane when dropped.
pub struct LanePlace {
    lanes: Arc<CheckLanes>,
    address: IpAddr,
    /// False once handed on (a waiter that has gone gives it back, disarmed): its drop then
    /// does nothing more.
    armed: bool,
}

impl CheckLanes {
    /// Lanes letting each address have `per_address` checks queued at a time (at least one).
    pub fn new(per_address: usize) -> Arc<Self> {
        Arc::new(CheckLanes {
            per_address: per_address.max(1),
            lanes: Mutex::new(HashMap::new()),
        })
    }

    fn lanes(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Lane>> {
        // A poisoned lock only means a thread panicked while holding it; the map is whole.
        self.lanes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A place for a check from `address`: at once while its lane has room, else when the
    /// checks ahead of it in the lane are done. Dropping the future gives up its turn.
    pub fn enter(
        self: &Arc<Self>,
        address: IpAddr,
    ) -> impl std::future::Future<Output = Option<LanePlace>> + 'static {
        let waiting = {
            let mut lanes = self.lanes();
            let lane = lanes.entry(address).or_default();
            if lane.entered < self.per_address {
                lane.entered += 1;
                None
            } else {
                let (place, waiting) = oneshot::channel();
                lane.waiting.push_back(place);
                Some(waiting)
            }
        };
        let now = waiting.is_none().then(|| LanePlace {
            lanes: self.clone(),
            address,
            armed: true,
        });
        async move {
            match waiting {
                // Closed only if the lanes went with their broker.
                Some(waiting) => waiting.await.ok(),
                None => now,
            }
        }
    }

    /// How many addresses have checks queued or waiting (for tests and logs).
    pub fn busy_addresses(&self) -> usize {
        self.lanes().len()
    }
}

impl Drop for LanePlace {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        loop {
            let next = {
                let mut lanes = self.lanes.lanes();
                let Some(lane) = lanes.get_mut(&self.address) else {
                    return;
                };
                match lane.waiting.pop_front() {
                    Some(next) => next,
                    None => {
                        lane.entered = lane.entered.saturating_sub(1);
                        if lane.entered == 0 {
                            lanes.remove(&self.address);
                        }
                        return;
                    }
                }
            };
            // Sent outside the lock: a waiter that has gone hands the place back, disarmed.
            let place = LanePlace {
                lanes: self.lanes.clone(),
                address: self.address,
                armed: true,
            };
            match next.send(place) {
                Ok(()) => return,
                Err(mut place) => place.armed = false,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    fn poll<F: Future>(future: std::pin::Pin<&mut F>) -> Poll<F::Output> {
        future.poll(&mut Context::from_waker(Waker::noop()))
    }

    fn ready(future: impl Future<Output = Option<LanePlace>>) -> LanePlace {
        let mut future = pin!(future);
        match poll(future.as_mut()) {
            Poll::Ready(Some(place)) => place,
            _ => panic!("a place at once"),
        }
    }

    const FLOOD: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 7));
    const GATE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 1));

    #[test]
    fn an_address_waits_in_its_own_lane_and_others_pass() {
        let lanes = CheckLanes::new(2);
        let first = ready(lanes.enter(FLOOD));
        let second = ready(lanes.enter(FLOOD));
        let mut third = pin!(lanes.enter(FLOOD));
        let mut fourth = pin!(lanes.enter(FLOOD));
        assert!(poll(third.as_mut()).is_pending(), "the lane is full");
        assert!(poll(fourth.as_mut()).is_pending());
        // Another address is not held behind them.
        let gate = ready(lanes.enter(GATE));
        assert_eq!(lanes.busy_addresses(), 2);
        drop(gate);
        assert_eq!(lanes.busy_addresses(), 1, "an empty lane is removed");
        // A finished check hands its place to the next in the lane, in order.
        drop(first);
        let Poll::Ready(Some(third_place)) = poll(third.as_mut()) else {
            panic!("the third enters when the first is done");
        };
        assert!(poll(fourth.as_mut()).is_pending());
        drop(second);
        drop(third_place);
        assert!(matches!(poll(fourth.as_mut()), Poll::Ready(Some(_))));
        assert_eq!(lanes.busy_addresses(), 0, "every place given back");
    }

    #[test]
    fn a_waiter_that_gave_up_passes_its_turn_on() {
        let lanes = CheckLanes::new(1);
        let first = ready(lanes.enter(FLOOD));
        let gone = lanes.enter(FLOOD);
        let mut next = pin!(lanes.enter(FLOOD));
        assert!(poll(next.as_mut()).is_pending());
        // A connection closed while it waited: its future is dropped unpolled.
        drop(gone);
        drop(first);
        let Poll::Ready(Some(place)) = poll(next.as_mut()) else {
            panic!("the turn skips the waiter that has gone");
        };
        drop(place);
        assert_eq!(lanes.busy_addresses(), 0);
        // A place handed to a waiter whose future is dropped before it polls again comes back.
        let first = ready(lanes.enter(GATE));
        let mut late = Box::pin(lanes.enter(GATE));
        assert!(poll(late.as_mut()).is_pending());
        drop(first);
        drop(late);
        assert_eq!(
            lanes.busy_addresses(),
            0,
            "the place in the channel was given back"
        );
    }
}
