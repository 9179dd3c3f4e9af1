//! `GET /api/v1/persistence/backup`: a backup of the broker's durable state, streamed as the
//! response body (`application/octet-stream`). It holds everything acknowledged before the
//! request, as one log segment: `switchboard restore FILE DIR` installs it
//! (`src/persistence/backup.rs`). 404 when the broker keeps no durable state.

use actix_web::body::SizedStream;
use actix_web::{web, HttpRequest, HttpResponse};

use super::{ApiError, HttpState};
use crate::persistence::{unix_ms_now, BackupError};
use crate::registry::BackUp;

/// Serves a backup: asks the Registry (whose store's writer writes it into the persistence
/// directory), then streams the file, deleted as soon as it is open.
pub async fn backup(
    req: HttpRequest,
    state: web::Data<HttpState>,
) -> Result<HttpResponse, ApiError> {
    state.authorize(&req).map_err(ApiError::unauthorized)?;
    // No timeout: a large state takes as long as a compaction to write. If the client goes
    // away meanwhile, the file written for nobody is deleted with the answer nobody takes.
    let written = match state.registry.send(BackUp).await {
        Ok(Ok(written)) => written,
        Ok(Err(e @ BackupError::Off)) => return Err(ApiError::new(404, e.to_string())),
        Ok(Err(e @ BackupError::Failed(_))) => return Err(ApiError::new(500, e.to_string())),
        Ok(Err(e @ BackupError::Stopped)) => return Err(ApiError::unavailable(&e.to_string())),
        Err(_) => return Err(ApiError::unavailable("the broker's registry has stopped")),
    };
    let file = std::fs::File::open(&written.path);
    let (path, bytes) = (written.path.clone(), written.bytes);
    // Deletes the file: the open one stays readable, and nothing is left behind whatever
    // becomes of the download.
    drop(written);
    let file = file.map_err(|e| {
        ApiError::new(
            500,
            format!("the backup {} could not be read: {e}", path.display()),
        )
    })?;
    let body = tokio_util::io::ReaderStream::new(tokio::fs::File::from_std(file));
    Ok(HttpResponse::Ok()
        .content_type("application/octet-stream")
        .insert_header((
            "Content-Disposition",
            format!(
                "attachment; filename=\"switchboard-backup-{}.log\"",
                unix_ms_now()
            ),
        ))
        .body(SizedStream::new(bytes, body)))
}
