//! The listener: accepts TCP connections and starts one Session per connection, round robin over
//! the worker Arbiters (one thread each).

use std::sync::Arc;
use std::time::Duration;

use actix_rt::ArbiterHandle;
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

use crate::session::{Session, SessionShared};

/// Accepts connections until the task is aborted.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    workers: Vec<ArbiterHandle>,
    shared: Arc<SessionShared>,
) {
    let mut next = 0usize;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Typically out of file descriptors: back off instead of spinning.
                warn!(error = %e, "accept failed");
                actix_rt::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if let Err(e) = stream.set_nodelay(true) {
            debug!(addr = %peer, error = %e, "cannot set TCP_NODELAY");
        }
        // A tokio socket is bound to the runtime that made it: move it as a std socket and
        // register it again inside the worker's runtime.
        let std_stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                warn!(addr = %peer, error = %e, "cannot hand over accepted socket");
                continue;
            }
        };
        let worker = &workers[next % workers.len()];
        next = next.wrapping_add(1);
        let shared = shared.clone();
        let spawned = worker.spawn(async move {
            match TcpStream::from_std(std_stream) {
                Ok(stream) => {
                    Session::start(stream, peer, shared);
                }
                Err(e) => warn!(addr = %peer, error = %e, "cannot register socket on worker"),
            }
        });
        if !spawned {
            warn!(addr = %peer, "worker arbiter is gone; connection dropped");
        }
    }
}
