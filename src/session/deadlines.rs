//! Session deadlines (the CONNECT deadline and keep-alive) on one coarse timer per worker
//! thread, instead of one runtime timer per connection.
//!
//! Each worker keeps a hashed timing wheel of [`TICK`]-wide slots. A Session arms one entry: a
//! tick, its connection id and a weak address (24 bytes, no allocation of its own), and takes it
//! out again when it arms another or stops, so a closed connection leaves nothing behind.
//! Traffic does not touch the wheel; a Session only notes when it last heard from its client.
//! When the entry comes due the worker sends the Session [`DeadlineDue`], and the Session either
//! closes the connection or arms a new entry at the deadline its latest traffic implies. An idle connection therefore
//! costs one wheel entry and one check per keep-alive period, and a busy one no more.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix::WeakAddr;

use tracing::{debug, info};

use super::{Phase, Session};
use crate::hooks::DisconnectReason;

/// Width of one wheel slot: deadlines are kept to within this (late, never early).
pub const TICK: Duration = Duration::from_millis(100);

/// Slots in the wheel: 1,024 ticks of 100 ms span 102 s, so a keep-alive of up to a minute
/// (90 s with its grace) comes due on its first pass; a longer one is looked at once per pass.
const SLOTS: usize = 1024;

/// Sent by the worker's deadline wheel to a Session whose armed deadline tick has come; handled
/// by the Session, which ignores it unless `0` is the tick of the entry it armed last.
#[derive(Message)]
#[rtype(result = "()")]
pub struct DeadlineDue(pub u64);

/// What [`Session`]'s `deadline_tick` holds while it has no entry on the wheel.
pub(super) const NO_DEADLINE: u64 = u64::MAX;

/// Where [`CompactInstant`] counts from: the first one this process takes.
static EPOCH: std::sync::LazyLock<Instant> = std::sync::LazyLock::new(Instant::now);

/// An instant in 8 bytes where an `Instant` takes 16 (a Session keeps one per connection, idle
/// or not): nanoseconds since [`EPOCH`], good for 584 years of uptime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct CompactInstant(u64);

impl CompactInstant {
    /// Now.
    pub(super) fn now() -> Self {
        let epoch = *EPOCH;
        let nanos = Instant::now().saturating_duration_since(epoch).as_nanos();
        CompactInstant(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// The instant this is.
    pub(super) fn instant(self) -> Instant {
        *EPOCH + Duration::from_nanos(self.0)
    }
}

struct Entry<T> {
    tick: u64,
    /// The Session's connection id: what [`disarm`] finds the entry by.
    id: u64,
    session: T,
}

/// One worker's wheel (generic over what an entry names, for its unit tests).
struct Wheel<T> {
    /// Tick 0 starts here.
    epoch: Instant,
    /// Ticks before this one have been swept.
    next_tick: u64,
    slots: Vec<Vec<Entry<T>>>,
    /// Entries in `slots`.
    len: usize,
    /// Whether this thread's sweeping task is running; cleared when the task is dropped (its
    /// arbiter stopped), so a later runtime on the same thread starts its own.
    sweeping: Rc<Cell<bool>>,
}

thread_local! {
    static WHEEL: RefCell<Wheel<WeakAddr<Session>>> = RefCell::new(Wheel {
        epoch: Instant::now(),
        next_tick: 0,
        slots: Vec::new(),
        len: 0,
        sweeping: Rc::new(Cell::new(false)),
    });
}

/// Arms a deadline for `session` (connection `id`) at `deadline` on this worker's wheel; returns
/// the tick armed, which the Session keeps to recognise its [`DeadlineDue`] and to [`disarm`] it.
/// Called on the Session's own thread; `None` only while the thread is being torn down.
pub(super) fn arm(id: u64, session: WeakAddr<Session>, deadline: Instant) -> Option<u64> {
    WHEEL
        .try_with(|wheel| {
            let mut wheel = wheel.borrow_mut();
            let tick = wheel.insert(deadline, id, session);
            if !wheel.sweeping.get() {
                wheel.sweeping.set(true);
                actix::spawn(sweep(wheel.sweeping.clone()));
            }
            tick
        })
        .ok()
}

/// Takes the entry of connection `id` armed at `tick` off this worker's wheel, if it is still
/// there (it is not once it came due).
pub(super) fn disarm(tick: u64, id: u64) {
    let _ = WHEEL.try_with(|wheel| wheel.borrow_mut().remove(tick, id));
}

/// Clears the flag when the sweeping task is dropped with its runtime (`owned`), unless the
/// task already gave it up.
struct SweepingFlag {
    flag: Rc<Cell<bool>>,
    owned: bool,
}

impl Drop for SweepingFlag {
    fn drop(&mut self) {
        if self.owned {
            self.flag.set(false);
        }
    }
}

/// The worker's sweeping task: once per tick, the entries that came due get [`DeadlineDue`].
/// It ends when the wheel is empty and is started again by the next [`arm`].
async fn sweep(sweeping: Rc<Cell<bool>>) {
    let mut flag = SweepingFlag {
        flag: sweeping,
        owned: true,
    };
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut due = Vec::new();
    loop {
        interval.tick().await;
        let Ok(empty) = WHEEL.try_with(|wheel| {
            let mut wheel = wheel.borrow_mut();
            wheel.take_due(Instant::now(), &mut due);
            let empty = wheel.len == 0;
            if empty {
                // Decided under the borrow, so an `arm` after this starts a new task.
                flag.flag.set(false);
                flag.owned = false;
            }
            empty
        }) else {
            return;
        };
        for entry in due.drain(..) {
            if let Some(session) = entry.session.upgrade() {
                session.do_send(DeadlineDue(entry.tick));
            }
        }
        if empty {
            return;
        }
    }
}

impl<T> Wheel<T> {
    /// Adds an entry due at `deadline`; returns its tick.
    fn insert(&mut self, deadline: Instant, id: u64, session: T) -> u64 {
        if self.slots.is_empty() {
            self.slots.resize_with(SLOTS, Vec::new);
        }
        let since = deadline.saturating_duration_since(self.epoch);
        // Rounded up: the entry is swept no earlier than the deadline.
        let tick = (since.as_nanos().div_ceil(TICK.as_nanos()) as u64).max(self.next_tick);
        self.slots[(tick % SLOTS as u64) as usize].push(Entry { tick, id, session });
        self.len += 1;
        tick
    }

    /// Removes the entry `id` armed at `tick`; whether it was there.
    fn remove(&mut self, tick: u64, id: u64) -> bool {
        let Some(slot) = self.slots.get_mut((tick % SLOTS as u64) as usize) else {
            return false;
        };
        match slot.iter().position(|e| e.id == id && e.tick == tick) {
            Some(at) => {
                slot.swap_remove(at);
                self.len -= 1;
                true
            }
            None => false,
        }
    }

    /// Moves the entries due by `now` into `due`.
    fn take_due(&mut self, now: Instant, due: &mut Vec<Entry<T>>) {
        let now_tick =
            (now.saturating_duration_since(self.epoch).as_nanos() / TICK.as_nanos()) as u64;
        // After a long stall, one pass over every slot covers all the ticks missed.
        let last = now_tick.min(self.next_tick + SLOTS as u64 - 1);
        while self.next_tick <= last {
            let slot = &mut self.slots[(self.next_tick % SLOTS as u64) as usize];
            let before = slot.len();
            let mut i = 0;
            while i < slot.len() {
                if slot[i].tick <= now_tick {
                    due.push(slot.swap_remove(i));
                } else {
                    i += 1;
                }
            }
            self.len -= before - slot.len();
            if slot.is_empty() && slot.capacity() > 64 {
                // A spike of connections leaves no large slot behind.
                *slot = Vec::new();
            }
            self.next_tick += 1;
        }
        self.next_tick = now_tick + 1;
    }
}

impl Session {
    /// Starts the keep-alive check; returns the keep-alive applied, in seconds.
    pub(super) fn start_keep_alive(&mut self, ctx: &mut Context<Self>, seconds: u16) -> u16 {
        // [MQTT-3.1.2-24] one and a half times the keep-alive without a packet ends the connection.
        // A keep-alive of 0 (none) or above `limits.max_keep_alive` gets the maximum instead.
        let max = self.shared.config.limits.max_keep_alive;
        let asked = Duration::from_secs(u64::from(seconds));
        let keep_alive = if seconds == 0 || asked > max {
            self.shared.metrics.add_limits_hit(1);
            debug!(client_id = %self.client_id(), asked = seconds, applied = ?max, "keep-alive capped");
            max
        } else {
            asked
        };
        let limit = keep_alive.mul_f32(1.5);
        self.keep_alive_limit_ms = u32::try_from(limit.as_millis()).unwrap_or(u32::MAX).max(1);
        self.arm_deadline(ctx, self.last_received.instant() + limit);
        u16::try_from(keep_alive.as_secs()).unwrap_or(u16::MAX)
    }

    /// One and a half times the keep-alive applied, once connected.
    fn keep_alive_limit(&self) -> Option<Duration> {
        (self.keep_alive_limit_ms > 0)
            .then(|| Duration::from_millis(u64::from(self.keep_alive_limit_ms)))
    }

    /// Puts this Session's next deadline check on its worker's wheel, replacing the last one.
    pub(super) fn arm_deadline(&mut self, ctx: &mut Context<Self>, at: Instant) {
        self.disarm_deadline();
        self.deadline_tick = arm(self.conn.0, ctx.address().downgrade(), at).unwrap_or(NO_DEADLINE);
    }

    /// Takes this Session's entry off its worker's wheel (it stops, or arms another).
    pub(super) fn disarm_deadline(&mut self) {
        let tick = std::mem::replace(&mut self.deadline_tick, NO_DEADLINE);
        if tick != NO_DEADLINE {
            disarm(tick, self.conn.0);
        }
    }

    /// The armed deadline came: a socket that never sent CONNECT, or a client silent for one
    /// and a half times its keep-alive, is closed; otherwise the next deadline is armed.
    fn check_deadline(&mut self, ctx: &mut Context<Self>) {
        match self.phase {
            Phase::AwaitingConnect => {
                info!(addr = %self.peer, "closing connection: no CONNECT before the deadline");
                self.close(
                    ctx,
                    DisconnectReason::Network("no CONNECT before the deadline".into()),
                );
            }
            // Asking the interceptor or the Registry; keep-alive starts with the CONNACK.
            Phase::Connecting => {}
            Phase::Connected { .. } => {
                let Some(limit) = self.keep_alive_limit() else {
                    return;
                };
                let deadline = self.last_received.instant() + limit;
                if Instant::now() >= deadline {
                    info!(client_id = %self.client_id(), addr = %self.peer, "keep-alive expired");
                    self.close(ctx, DisconnectReason::KeepAliveTimeout);
                } else {
                    self.arm_deadline(ctx, deadline);
                }
            }
        }
    }
}

impl Handler<DeadlineDue> for Session {
    type Result = ();

    fn handle(&mut self, msg: DeadlineDue, ctx: &mut Context<Self>) {
        if self.deadline_tick == msg.0 && msg.0 != NO_DEADLINE {
            // Its entry left the wheel when it came due.
            self.deadline_tick = NO_DEADLINE;
            if !self.closing {
                self.check_deadline(ctx);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wheel(epoch: Instant) -> Wheel<u32> {
        Wheel {
            epoch,
            next_tick: 0,
            slots: Vec::new(),
            len: 0,
            sweeping: Rc::new(Cell::new(false)),
        }
    }

    fn due_at(wheel: &mut Wheel<u32>, now: Instant) -> Vec<u32> {
        let mut due = Vec::new();
        wheel.take_due(now, &mut due);
        let mut ids: Vec<u32> = due.into_iter().map(|e| e.session).collect();
        ids.sort_unstable();
        ids
    }

    #[test]
    fn entries_come_due_at_their_deadline_never_before() {
        let epoch = Instant::now();
        let mut w = wheel(epoch);
        w.insert(epoch + Duration::from_millis(150), 1, 1);
        w.insert(epoch + Duration::from_millis(1_000), 2, 2);
        assert!(due_at(&mut w, epoch + Duration::from_millis(149)).is_empty());
        // 150 ms rounds up to tick 2 (200 ms): late by under one tick, never early.
        assert!(due_at(&mut w, epoch + Duration::from_millis(199)).is_empty());
        assert_eq!(due_at(&mut w, epoch + Duration::from_millis(200)), vec![1]);
        assert!(due_at(&mut w, epoch + Duration::from_millis(999)).is_empty());
        assert_eq!(
            due_at(&mut w, epoch + Duration::from_millis(1_000)),
            vec![2]
        );
        assert_eq!(w.len, 0);
    }

    #[test]
    fn a_deadline_beyond_one_turn_of_the_wheel_waits_for_its_round() {
        let epoch = Instant::now();
        let mut w = wheel(epoch);
        let span = TICK * SLOTS as u32;
        // Same slot as tick 5, three turns later.
        w.insert(epoch + span * 3 + TICK * 5, 7, 7);
        w.insert(epoch + TICK * 5, 8, 8);
        assert_eq!(due_at(&mut w, epoch + TICK * 5), vec![8]);
        assert!(due_at(&mut w, epoch + span + TICK * 5).is_empty());
        assert!(due_at(&mut w, epoch + span * 2 + TICK * 5).is_empty());
        assert_eq!(due_at(&mut w, epoch + span * 3 + TICK * 5), vec![7]);
    }

    #[test]
    fn a_long_stall_sweeps_everything_overdue_in_one_pass() {
        let epoch = Instant::now();
        let mut w = wheel(epoch);
        for i in 0..3_000u32 {
            w.insert(
                epoch + Duration::from_millis(u64::from(i) * 37),
                u64::from(i),
                i,
            );
        }
        let later = epoch + Duration::from_secs(500);
        assert_eq!(due_at(&mut w, later), (0..3_000).collect::<Vec<_>>());
        assert_eq!(w.len, 0);
        // A deadline armed after the stall is not swept at once.
        w.insert(later + Duration::from_secs(1), 9, 9);
        assert!(due_at(&mut w, later + Duration::from_millis(500)).is_empty());
        assert_eq!(due_at(&mut w, later + Duration::from_secs(1)), vec![9]);
    }

    #[test]
    fn a_removed_entry_never_comes_due_and_leaves_the_others() {
        let epoch = Instant::now();
        let mut w = wheel(epoch);
        let deadline = epoch + Duration::from_secs(2);
        let ticks: Vec<u64> = (0..5u32)
            .map(|i| w.insert(deadline, u64::from(i), i))
            .collect();
        assert!(w.remove(ticks[3], 3));
        assert!(!w.remove(ticks[3], 3), "already gone");
        assert!(!w.remove(ticks[1] + 1, 1), "the tick must match too");
        assert_eq!(w.len, 4);
        assert_eq!(due_at(&mut w, deadline), vec![0, 1, 2, 4]);
        assert!(
            !w.remove(ticks[0], 0),
            "an entry that came due is off the wheel"
        );
        assert_eq!(w.len, 0);
    }

    #[test]
    fn a_deadline_already_past_is_due_at_the_next_sweep() {
        let epoch = Instant::now();
        let mut w = wheel(epoch + Duration::from_secs(1));
        w.insert(epoch, 3, 3);
        assert_eq!(due_at(&mut w, epoch + Duration::from_secs(1)), vec![3]);
    }
}
