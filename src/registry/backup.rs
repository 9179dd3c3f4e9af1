//! A backup of the broker's durable state, asked of the Registry (which owns the store) by the
//! admin API (`GET /api/v1/persistence/backup`, `src/http/backup.rs`).

use actix::prelude::*;

use super::Registry;
use crate::persistence::{BackupError, BackupFile};

/// Sent by the HTTP server to the Registry: back up everything acknowledged so far (the
/// store's writer writes it between two commits: `src/persistence/backup.rs`). Answers the
/// file written, which the asker reads and deletes, or why there is none.
#[derive(Debug, Message)]
#[rtype(result = "Result<BackupFile, BackupError>")]
pub struct BackUp;

impl Handler<BackUp> for Registry {
    type Result = ResponseFuture<Result<BackupFile, BackupError>>;

    fn handle(&mut self, _: BackUp, _: &mut Context<Self>) -> Self::Result {
        match &self.store {
            Some(store) => Box::pin(store.backup()),
            None => Box::pin(std::future::ready(Err(BackupError::Off))),
        }
    }
}
