//! The broker's HTTP server (`[http]`, actix-web on the broker's actix System): Prometheus
//! `/metrics`, the health checks under `/api/v1/health/` and the admin API under `/api/v1`
//! (`api.rs`), and the live dashboard at `/` (`dashboard.rs`, fed by `feed.rs`). A configured
//! `http.token` is required as `Authorization: Bearer <token>` on everything but the health
//! checks and the page itself (which holds no data), compared in constant time. Every error is a
//! JSON object `{"error": "..."}` with a 4xx or 5xx status.

mod api;
mod backup;
mod client_messages;
mod dashboard;
pub mod feed;
mod persistence;
pub mod prometheus;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use actix_web::dev::ServerHandle;
use actix_web::http::header;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::HttpConfig;
use crate::metrics::Metrics;
use crate::registry::{GetStats, Registry, RegistryStats};

/// How long a request waits for the Registry before it answers 503.
const REGISTRY_TIMEOUT: Duration = Duration::from_secs(5);

/// What the handlers read: the broker's actors and counters, and the token.
pub struct HttpState {
    registry: Addr<Registry>,
    metrics: Arc<Metrics>,
    /// SHA-256 of `http.token`: requests are compared by digest, in constant time.
    token_digest: Option<[u8; 32]>,
    /// Cancelled when the broker stops accepting connections (it is no longer ready).
    stopping: CancellationToken,
    /// The dashboard's live feed.
    feed: actix::Addr<feed::Feed>,
}

impl HttpState {
    /// State for the handlers of a broker with these actors and counters; starts the dashboard's
    /// feed actor on the current System.
    pub fn new(
        config: &HttpConfig,
        registry: Addr<Registry>,
        metrics: Arc<Metrics>,
        stopping: CancellationToken,
    ) -> Self {
        use actix::Actor;
        let feed = feed::Feed::new(registry.clone(), metrics.clone()).start();
        HttpState {
            registry,
            metrics,
            token_digest: config.token.as_deref().map(digest),
            stopping,
            feed,
        }
    }

    /// `Ok` when no token is configured or the request carries it; else why not (a 401).
    fn authorize(&self, req: &HttpRequest) -> Result<(), &'static str> {
        let Some(expected) = &self.token_digest else {
            return Ok(());
        };
        let presented = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match presented {
            Some(token) if constant_time_eq(&digest(token.trim()), expected) => Ok(()),
            Some(_) => Err("the bearer token is not the one configured"),
            None => Err("this endpoint needs `Authorization: Bearer <http.token>`"),
        }
    }

    /// The Registry's tables; else why not (a 503).
    async fn registry_stats(&self) -> Result<RegistryStats, &'static str> {
        self.ask(GetStats).await
    }

    /// Asks the Registry; else why it did not answer (a 503).
    async fn ask<M>(&self, msg: M) -> Result<M::Result, &'static str>
    where
        M: actix::Message + Send + 'static,
        M::Result: Send,
        Registry: actix::Handler<M>,
    {
        match tokio::time::timeout(REGISTRY_TIMEOUT, self.registry.send(msg)).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(_)) => Err("the broker's registry has stopped"),
            Err(_) => Err("the broker's registry did not answer within 5 s"),
        }
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Compares two digests without stopping at the first difference.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A request the API refuses, or cannot serve: its status and what is wrong. Answered as JSON,
/// `{"error": message}`.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    status: u16,
    message: String,
}

impl ApiError {
    fn new(status: u16, message: String) -> Self {
        ApiError { status, message }
    }

    fn bad_request(message: String) -> Self {
        ApiError::new(400, message)
    }

    fn unauthorized(message: &str) -> Self {
        ApiError::new(401, message.to_string())
    }

    fn unavailable(message: &str) -> Self {
        ApiError::new(503, message.to_string())
    }
}

impl actix_web::ResponseError for ApiError {
    fn status_code(&self) -> actix_web::http::StatusCode {
        actix_web::http::StatusCode::from_u16(self.status)
            .unwrap_or(actix_web::http::StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        if self.status == 401 {
            unauthorized(&self.message)
        } else {
            error(self.status, &self.message)
        }
    }
}

/// A JSON error response: `{"error": message}`.
pub fn error(status: u16, message: &str) -> HttpResponse {
    let status = actix_web::http::StatusCode::from_u16(status)
        .unwrap_or(actix_web::http::StatusCode::INTERNAL_SERVER_ERROR);
    HttpResponse::build(status).json(serde_json::json!({ "error": message }))
}

fn unauthorized(message: &str) -> HttpResponse {
    let mut response = error(401, message);
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    response
}

async fn metrics(req: HttpRequest, state: web::Data<HttpState>) -> HttpResponse {
    if let Err(why) = state.authorize(&req) {
        return unauthorized(why);
    }
    let stats = match state.registry_stats().await {
        Ok(stats) => stats,
        Err(why) => return error(503, why),
    };
    let scrape = prometheus::Scrape {
        stats,
        metrics: state.metrics.snapshot(),
        traffic: state.metrics.traffic.totals(),
        bridges: state.metrics.bridges.snapshots(),
        tls_certificate_expiry: state.metrics.tls_certificate_expiry(),
        cluster: state.metrics.cluster.snapshot(),
        persistence: state.metrics.persistence.snapshot(),
        log_lines_dropped: crate::logging::log_lines_dropped(),
    };
    let openmetrics = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("application/openmetrics-text"));
    match prometheus::render(scrape) {
        Ok(text) if openmetrics => HttpResponse::Ok()
            .content_type(prometheus::CONTENT_TYPE)
            .body(text),
        Ok(text) => HttpResponse::Ok()
            .content_type(prometheus::TEXT_CONTENT_TYPE)
            .body(prometheus::to_text_format(&text)),
        Err(_) => error(500, "the metrics could not be encoded"),
    }
}

/// The process serves HTTP: it is alive.
async fn live() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "live" }))
}

/// Ready when the broker accepts connections, its Registry answers, and it can acknowledge what
/// waits for the disk: no append or sync of its log is failing now, and (with
/// `fsync = "always"`) none has failed since the start.
async fn ready(state: web::Data<HttpState>) -> HttpResponse {
    if state.stopping.is_cancelled() {
        return error(503, "the broker is shutting down");
    }
    let persistence = &state.metrics.persistence;
    if persistence.durability_lost() {
        return error(
            503,
            "a sync of the persistence log failed: nothing that waits for the disk is acknowledged until the broker restarts",
        );
    }
    if persistence.writes_failing() {
        return error(
            503,
            "the persistence log cannot be written (a full disk?): nothing more that waits for the disk is acknowledged until a write succeeds (tried again each second)",
        );
    }
    if persistence.syncs_failing() {
        return error(
            503,
            "the persistence log cannot be synced: nothing more that waits for the disk is acknowledged until a sync succeeds (tried again each second)",
        );
    }
    match state.registry_stats().await {
        Ok(stats) => HttpResponse::Ok().json(serde_json::json!({
            "status": "ready",
            "clients_connected": stats.clients_online,
        })),
        Err(why) => error(503, why),
    }
}

async fn not_found(req: HttpRequest) -> HttpResponse {
    error(
        404,
        &format!("no such endpoint: {} {}", req.method(), req.path()),
    )
}

/// The running HTTP server.
pub struct RunningHttp {
    /// The address it is bound to (useful with port 0).
    pub local_addr: SocketAddr,
    handle: ServerHandle,
}

impl RunningHttp {
    /// Stops the server (requests in progress are dropped).
    pub fn stop(&self) {
        let handle = self.handle.clone();
        actix_rt::spawn(async move { handle.stop(false).await });
    }
}

/// Binds `[http]` and starts serving on the current actix System (one worker thread: the
/// endpoints are for operators, not for traffic), with the state `state` makes. `None` (and
/// nothing started) when `http.enabled` is false.
pub fn start(
    config: &HttpConfig,
    state: impl FnOnce() -> HttpState,
) -> std::io::Result<Option<RunningHttp>> {
    if !config.enabled {
        return Ok(None);
    }
    let state = web::Data::new(state());
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .route("/", web::get().to(dashboard::index))
            .route("/metrics", web::get().to(metrics))
            .service(
                web::scope("/api/v1")
                    .route("/health/live", web::get().to(live))
                    .route("/health/ready", web::get().to(ready))
                    .route("/events", web::get().to(dashboard::events))
                    .route("/persistence", web::get().to(persistence::status))
                    .route("/persistence/backup", web::get().to(backup::backup))
                    .configure(api::routes),
            )
            .default_service(web::to(not_found))
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(1)
    .bind((config.bind, config.port))?;
    let local_addr = server
        .addrs()
        .first()
        .copied()
        .ok_or_else(|| std::io::Error::other("the HTTP server bound no address"))?;
    let server = server.run();
    let handle = server.handle();
    actix_rt::spawn(server);
    info!("dashboard, metrics and admin API on http://{local_addr}/");
    Ok(Some(RunningHttp { local_addr, handle }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_compare_equal_only_when_equal() {
        assert!(constant_time_eq(&digest("s3cret"), &digest("s3cret")));
        assert!(!constant_time_eq(&digest("s3cret"), &digest("s3creT")));
        assert!(!constant_time_eq(&digest("s3cret"), &digest("")));
    }
}
