//! An actor that forwards every message it is sent into a channel, for tests that listen to the
//! device actors (a `ManagedConnection`'s events, what a `Consumer` hands on).

use actix::prelude::*;
use tokio::sync::mpsc;

/// Forwards each `M` it gets into its channel.
pub struct Forward<M>(mpsc::UnboundedSender<M>);

impl<M: Message<Result = ()> + Send + 'static> Actor for Forward<M> {
    type Context = Context<Self>;
}

impl<M: Message<Result = ()> + Send + 'static> Handler<M> for Forward<M> {
    type Result = ();
    fn handle(&mut self, msg: M, _: &mut Context<Self>) {
        let _ = self.0.send(msg);
    }
}

/// A started [`Forward`] (inside an actix `System`) and the receiving end of its channel.
pub fn forward<M: Message<Result = ()> + Send + 'static>(
) -> (Recipient<M>, mpsc::UnboundedReceiver<M>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (Forward(tx).start().recipient(), rx)
}
