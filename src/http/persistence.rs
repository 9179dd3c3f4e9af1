//! `GET /api/v1/persistence`: the persistence writer's state as JSON (its policy, the log's
//! size, what it has done, and whether writes or syncs of it are failing), the same summary the
//! dashboard's event stream carries each second. `{"enabled": false}` for a broker in memory.

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};

use super::{ApiError, HttpState};
use crate::persistence::PersistenceSnapshot;

/// What the API and the dashboard show of the writer's counters.
pub(super) fn summary(p: &PersistenceSnapshot) -> Value {
    json!({
        "fsync": p.fsync,
        "log_bytes": p.log_bytes,
        "live_bytes": p.live_bytes,
        "commits_total": p.commits,
        "appended_bytes_total": p.appended_bytes,
        "syncs_total": p.syncs,
        "sync_seconds_total": p.sync_seconds,
        "compactions_total": p.compactions,
        "write_failures_total": p.write_failures,
        "sync_failures_total": p.sync_failures,
        "writes_failing": p.writes_failing,
        "syncs_failing": p.syncs_failing,
        "durability_lost": p.durability_lost,
    })
}

/// Answers the writer's [`summary`] with `"enabled": true`, or `{"enabled": false}`.
pub async fn status(
    req: HttpRequest,
    state: web::Data<HttpState>,
) -> Result<HttpResponse, ApiError> {
    super::api::guard(&req, &state)?;
    let Some(snapshot) = state.metrics.persistence.snapshot() else {
        return Ok(HttpResponse::Ok().json(json!({ "enabled": false })));
    };
    let mut answer = summary(&snapshot);
    if let Some(fields) = answer.as_object_mut() {
        fields.insert("enabled".into(), Value::Bool(true));
    }
    Ok(HttpResponse::Ok().json(answer))
}
