//! `--churn-beside`: one client beside the scenario that subscribes to a filter and
//! unsubscribes from it again, each change waiting for its SUBACK or UNSUBACK, at a set rate
//! of changes per second. It stands for a fleet whose devices come and go, subscribing as they
//! connect: a broker that orders live traffic behind subscription changes pays for it there.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::MissedTickBehavior;

use crate::wire;

/// Subscribes and unsubscribes at `per_second` changes a second until the task is dropped,
/// counting each acknowledged change in `done`.
pub async fn run(addr: SocketAddr, per_second: f64, done: Arc<AtomicU64>) -> Result<(), String> {
    let mut stream = wire::handshake(addr, "churn-beside")
        .await
        .map_err(|e| format!("churn client: {e}"))?;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per_second));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let filter = "churn/beside".to_string();
    let mut buf = Vec::with_capacity(256);
    let mut pid: u16 = 1;
    let mut subscribed = false;
    loop {
        tick.tick().await;
        let (frame, ack) = match subscribed {
            false => (wire::subscribe(pid, std::slice::from_ref(&filter), 0), 0x90),
            true => (wire::unsubscribe(pid, &filter), 0xB0),
        };
        stream
            .write_all(&frame)
            .await
            .map_err(|e| format!("churn client: {e}"))?;
        'ack: loop {
            let mut chunk = [0u8; 256];
            let n = stream
                .read(&mut chunk)
                .await
                .map_err(|e| format!("churn client: {e}"))?;
            if n == 0 {
                return Err("churn client: the broker closed the connection".into());
            }
            buf.extend_from_slice(&chunk[..n]);
            let (frames, used) = wire::frames(&buf);
            let acked = frames.iter().any(|f| f.byte1 == ack);
            buf.drain(..used);
            if acked {
                break 'ack;
            }
        }
        subscribed = !subscribed;
        pid = pid % u16::MAX + 1;
        done.fetch_add(1, Ordering::Relaxed);
    }
}
