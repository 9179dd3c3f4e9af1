//! Traffic counters (packets, PUBLISHes by QoS, bytes, each way), and the gauge of QoS 1/2
//! messages held for connected clients, kept per worker thread, so that counting a packet is a
//! write to a cache line only that thread writes: no lock and no shared write per message.
//! Readers (`$SYS`, metrics) sum the slots of every thread.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// One thread's counters, on cache lines of their own.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Slot {
    packets_received: AtomicU64,
    packets_sent: AtomicU64,
    publishes_received: [AtomicU64; 3],
    publishes_sent: [AtomicU64; 3],
    bytes_received: AtomicU64,
    bytes_sent: AtomicU64,
    /// In-broker delivery latency: deliveries per bucket of [`LATENCY_BOUNDS`] (not cumulative;
    /// the last counts those above every bound), and the sum in nanoseconds.
    latency_buckets: [AtomicU64; LATENCY_BOUNDS.len() + 1],
    latency_sum_ns: AtomicU64,
    /// QoS 1/2 messages in flight or queued in the Sessions on this thread: the sum of the
    /// changes they reported ([`Traffic::held_changed`]) in two's complement, so that the
    /// wrapping sum over the slots is what is held even where one slot took a Session's count
    /// and another its taking back (a thread that counted for more brokers than it remembers).
    held_messages: AtomicU64,
    /// Their bytes (topic, payload, properties), summed the same way.
    held_bytes: AtomicU64,
}

/// Upper bounds, in seconds, of the buckets of the in-broker delivery latency histogram.
pub const LATENCY_BOUNDS: [f64; 15] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 5.0,
];

/// Adds `n` to a counter only this thread writes: a plain load and store, no locked
/// instruction. Readers on other threads see the value with relaxed ordering.
fn bump(counter: &AtomicU64, n: u64) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(n),
        Ordering::Relaxed,
    );
}

/// The traffic counters of one broker: one slot per thread that counted. Shared by the
/// Sessions (through [`SessionShared`](crate::session::SessionShared)) and read by `$SYS` and
/// the metrics.
#[derive(Debug)]
pub struct Traffic {
    /// Tells this broker's slots from another's in a thread's [`LOCAL`] list.
    id: u64,
    slots: Mutex<Vec<Arc<Slot>>>,
}

impl Default for Traffic {
    fn default() -> Self {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        Traffic {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            slots: Mutex::new(Vec::new()),
        }
    }
}

/// How many brokers' slots one thread remembers; a thread counts for one broker in practice
/// (the worker threads are the broker's own), more only in tests.
const SLOTS_PER_THREAD: usize = 4;

thread_local! {
    /// This thread's slots, by broker ([`Traffic::id`]), the most recently used first.
    static LOCAL: RefCell<Vec<(u64, Arc<Slot>)>> = const { RefCell::new(Vec::new()) };
}

/// What was written to one connection's socket in one write, counted from the bytes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// MQTT packets.
    pub packets: u64,
    /// PUBLISH packets by QoS.
    pub publishes: [u64; 3],
    /// Bytes.
    pub bytes: u64,
}

impl Written {
    /// Counts the packets in `frames`, whole MQTT packets as the Session encoded them: the
    /// fixed header's type and QoS bits, then the Remaining Length to skip to the next.
    pub fn count(frames: &[u8]) -> Written {
        let mut written = Written {
            bytes: frames.len() as u64,
            ..Written::default()
        };
        let mut at = 0;
        while let Some(&first) = frames.get(at) {
            let (mut length, mut shift, mut i) = (0usize, 0, at + 1);
            loop {
                let Some(&byte) = frames.get(i) else {
                    return written;
                };
                length |= ((byte & 0x7f) as usize) << shift;
                i += 1;
                shift += 7;
                if byte & 0x80 == 0 || shift > 21 {
                    break;
                }
            }
            written.packets += 1;
            if first >> 4 == 3 {
                let qos = ((first >> 1) & 3).min(2) as usize;
                written.publishes[qos] += 1;
            }
            at = i + length;
        }
        written
    }
}

/// Summed counters of every thread, since start.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct TrafficTotals {
    /// MQTT packets of any type received from clients.
    pub packets_received: u64,
    /// MQTT packets of any type written to clients.
    pub packets_sent: u64,
    /// PUBLISH packets received, by QoS.
    pub publishes_received: [u64; 3],
    /// PUBLISH packets written, by QoS.
    pub publishes_sent: [u64; 3],
    /// Bytes read from client sockets.
    pub bytes_received: u64,
    /// Bytes written to client sockets.
    pub bytes_sent: u64,
    /// Deliveries per latency bucket ([`LATENCY_BOUNDS`], then above them all), not
    /// cumulative.
    pub latency_buckets: [u64; LATENCY_BOUNDS.len() + 1],
    /// Sum of the latencies counted, in seconds.
    pub latency_sum_seconds: f64,
    /// QoS 1/2 messages in flight or queued for connected clients, now (a gauge: each Session
    /// brings its count up to date when it writes, so it may lag a turn behind).
    pub held_for_connected: u64,
    /// Their bytes: topic, payload and properties.
    pub held_bytes_for_connected: u64,
}

impl TrafficTotals {
    /// PUBLISH packets received, all QoS.
    pub fn publishes_received_total(&self) -> u64 {
        self.publishes_received.iter().sum()
    }

    /// PUBLISH packets written, all QoS.
    pub fn publishes_sent_total(&self) -> u64 {
        self.publishes_sent.iter().sum()
    }
}

impl Traffic {
    /// Runs `count` on this thread's slot of this broker, registering one first if needed.
    fn local(&self, count: impl FnOnce(&Slot)) {
        LOCAL.with(|local| {
            let mut local = local.borrow_mut();
            if let Some((owner, slot)) = local.first() {
                if *owner == self.id {
                    return count(slot);
                }
            }
            let slot = match local.iter().position(|(owner, _)| *owner == self.id) {
                Some(at) => local.remove(at).1,
                None => {
                    // A slot forgotten below stays registered with its broker: its counts are
                    // kept, and a later count here registers a new one.
                    local.truncate(SLOTS_PER_THREAD - 1);
                    let slot = Arc::new(Slot::default());
                    self.slots
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(slot.clone());
                    slot
                }
            };
            count(&slot);
            local.insert(0, (self.id, slot));
        });
    }

    /// One packet was read from a client; `publish_qos` is its QoS if it is a PUBLISH.
    pub fn packet_received(&self, publish_qos: Option<u8>) {
        self.local(|slot| {
            bump(&slot.packets_received, 1);
            if let Some(qos) = publish_qos {
                bump(&slot.publishes_received[usize::from(qos.min(2))], 1);
            }
        });
    }

    /// `n` bytes were read from a client's socket.
    pub fn bytes_received(&self, n: usize) {
        self.local(|slot| bump(&slot.bytes_received, n as u64));
    }

    /// A write to a client's socket completed.
    pub fn written(&self, written: &Written) {
        self.local(|slot| {
            bump(&slot.packets_sent, written.packets);
            for (counter, n) in slot.publishes_sent.iter().zip(written.publishes) {
                if n > 0 {
                    bump(counter, n);
                }
            }
            bump(&slot.bytes_sent, written.bytes);
        });
    }

    /// A message read `latency` ago was just encoded for a subscriber: the time it spent in the
    /// broker, from the read of its PUBLISH to the encoding of this delivery.
    pub fn delivered_after(&self, latency: std::time::Duration) {
        let seconds = latency.as_secs_f64();
        let bucket = LATENCY_BOUNDS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(LATENCY_BOUNDS.len());
        self.local(|slot| {
            if let Some(counter) = slot.latency_buckets.get(bucket) {
                bump(counter, 1);
            }
            bump(
                &slot.latency_sum_ns,
                u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX),
            );
        });
    }

    /// A Session's QoS 1/2 messages in flight or queued, and their bytes, changed by
    /// `(messages, bytes)` since it last said ([`crate::session::Outbound::take_held_change`]);
    /// nothing to do for no change.
    pub fn held_changed(&self, (messages, bytes): (i64, i64)) {
        if messages == 0 && bytes == 0 {
            return;
        }
        // Two's complement: adding the bits of a negative change subtracts it.
        self.local(|slot| {
            bump(&slot.held_messages, messages as u64);
            bump(&slot.held_bytes, bytes as u64);
        });
    }

    /// The counters of every thread, summed.
    pub fn totals(&self) -> TrafficTotals {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut totals = TrafficTotals::default();
        for slot in self
            .slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            totals.packets_received += get(&slot.packets_received);
            totals.packets_sent += get(&slot.packets_sent);
            for qos in 0..3 {
                totals.publishes_received[qos] += get(&slot.publishes_received[qos]);
                totals.publishes_sent[qos] += get(&slot.publishes_sent[qos]);
            }
            totals.bytes_received += get(&slot.bytes_received);
            totals.bytes_sent += get(&slot.bytes_sent);
            for (total, bucket) in totals.latency_buckets.iter_mut().zip(&slot.latency_buckets) {
                *total += get(bucket);
            }
            totals.latency_sum_seconds += get(&slot.latency_sum_ns) as f64 / 1e9;
            totals.held_for_connected = totals
                .held_for_connected
                .wrapping_add(get(&slot.held_messages));
            totals.held_bytes_for_connected = totals
                .held_bytes_for_connected
                .wrapping_add(get(&slot.held_bytes));
        }
        totals
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_packets_and_publishes_by_qos_from_the_bytes() {
        let mut out = bytes::BytesMut::new();
        crate::codec::write_pingresp(&mut out);
        let header = |qos| crate::codec::PublishHeader {
            qos,
            pid: 7,
            retain: false,
            dup: false,
        };
        crate::codec::write_publish(&mut out, "a/b", &[0; 300], header(crate::QoS::AtLeastOnce));
        crate::codec::write_publish(&mut out, "a/b", b"x", header(crate::QoS::AtMostOnce));
        crate::codec::write_ack(&mut out, crate::codec::Ack::PubAck, 9);
        crate::codec::write_publish(&mut out, "t", &[1; 20_000], header(crate::QoS::ExactlyOnce));
        let written = Written::count(&out);
        assert_eq!(written.packets, 5);
        assert_eq!(written.publishes, [1, 1, 1]);
        assert_eq!(written.bytes, out.len() as u64);
    }

    #[test]
    fn a_slot_per_thread_summed() {
        let traffic = Arc::new(Traffic::default());
        traffic.packet_received(Some(1));
        traffic.bytes_received(10);
        let other = traffic.clone();
        std::thread::spawn(move || {
            other.packet_received(None);
            other.bytes_received(5);
            other.written(&Written {
                packets: 2,
                publishes: [0, 0, 2],
                bytes: 40,
            });
        })
        .join()
        .expect("thread");
        // A second broker on this thread gets its own slot.
        let second = Traffic::default();
        second.packet_received(Some(0));
        traffic.packet_received(Some(1));
        let totals = traffic.totals();
        assert_eq!(
            traffic.slots.lock().expect("slots").len(),
            2,
            "one slot per thread"
        );
        assert_eq!(totals.packets_received, 3);
        assert_eq!(totals.publishes_received, [0, 2, 0]);
        assert_eq!(totals.bytes_received, 15);
        assert_eq!(totals.packets_sent, 2);
        assert_eq!(totals.publishes_sent, [0, 0, 2]);
        assert_eq!(totals.bytes_sent, 40);
        assert_eq!(second.totals().publishes_received, [1, 0, 0]);
    }

    #[test]
    fn held_messages_are_a_gauge_summed_over_the_threads() {
        let traffic = Arc::new(Traffic::default());
        traffic.held_changed((5, 500));
        let other = traffic.clone();
        std::thread::spawn(move || {
            other.held_changed((3, 30));
            // Taken back on another slot than it was counted on: the sum still holds.
            other.held_changed((-4, -400));
        })
        .join()
        .expect("thread");
        let totals = traffic.totals();
        assert_eq!(
            (totals.held_for_connected, totals.held_bytes_for_connected),
            (4, 130)
        );
        traffic.held_changed((-1, -30));
        traffic.held_changed((0, 0));
        let totals = traffic.totals();
        assert_eq!(
            (totals.held_for_connected, totals.held_bytes_for_connected),
            (3, 100)
        );
    }

    #[test]
    fn latencies_land_in_their_buckets() {
        use std::time::Duration;
        let traffic = Traffic::default();
        traffic.delivered_after(Duration::from_micros(30)); // <= 50 us
        traffic.delivered_after(Duration::from_micros(50)); // <= 50 us (bounds are inclusive)
        traffic.delivered_after(Duration::from_micros(700)); // <= 1 ms
        traffic.delivered_after(Duration::from_secs(30)); // above every bound
        let totals = traffic.totals();
        assert_eq!(totals.latency_buckets[0], 2);
        assert_eq!(totals.latency_buckets[4], 1);
        assert_eq!(totals.latency_buckets[LATENCY_BOUNDS.len()], 1);
        assert_eq!(totals.latency_buckets.iter().sum::<u64>(), 4);
        assert!((totals.latency_sum_seconds - 30.00078).abs() < 1e-9);
    }
}
