//! The admin API under `/api/v1`: clients (list, one, disconnect; their messages in
//! `client_messages.rs`), subscriptions, retained messages, publishing, bridges, the cluster.
//! JSON in and out; a bad request gets a 4xx with `{"error": "..."}` saying what is wrong.

use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{ApiError, HttpState};
use crate::message::{Message, QoS, SubscriptionOptions};
use crate::registry::{
    AdminPublish, ClientSummary, GetClient, Kick, ListClients, ListRetained, ListSubscriptions,
    SessionHandle, SessionReport, ToSession, WillSummary,
};

/// Page size when none is asked for.
const DEFAULT_LIMIT: usize = 50;
/// The largest page served.
const MAX_LIMIT: usize = 1000;
/// How long a connected client's Session has to report its counts.
const REPORT_TIMEOUT: Duration = Duration::from_secs(1);

/// The API's routes, mounted under `/api/v1`.
pub fn routes(config: &mut web::ServiceConfig) {
    config
        .route("/clients", web::get().to(list_clients))
        .route("/clients/{id}", web::get().to(get_client))
        .route("/clients/{id}", web::delete().to(kick_client))
        .route(
            "/clients/{id}/messages",
            web::get().to(super::client_messages::client_messages),
        )
        .route("/subscriptions", web::get().to(list_subscriptions))
        .route("/retained", web::get().to(list_retained))
        .route("/publish", web::post().to(publish))
        .route("/bridges", web::get().to(list_bridges))
        .route("/cluster", web::get().to(cluster));
}

/// `GET /api/v1/cluster`: this node, its NATS connection and counts, and the other nodes with
/// the number of filters each holds; `{"enabled": false}` without `[cluster]`.
async fn cluster(req: HttpRequest, state: web::Data<HttpState>) -> Result<HttpResponse, ApiError> {
    guard(&req, &state)?;
    let status = &state.metrics.cluster;
    let (Some(view), Some(counts)) = (status.view(), status.snapshot()) else {
        return Ok(HttpResponse::Ok().json(json!({ "enabled": false })));
    };
    Ok(HttpResponse::Ok().json(json!({
        "enabled": true,
        "node": view.node,
        "nats_connected": counts.connected,
        "nats_server": view.server,
        "sent": counts.sent,
        "received": counts.received,
        "dropped": counts.dropped,
        "subscribe_waits": counts.subscribe_waits,
        "subscribe_wait_timeouts": counts.subscribe_wait_timeouts,
        "nodes_timed_out": counts.nodes_timed_out,
        "filters": view.filters,
        "nodes": view.nodes.iter().map(|(node, filters)| json!({
            "node": node, "filters": filters,
        })).collect::<Vec<_>>(),
        "shared_groups": view.shared.iter().map(|(group, filter, nodes)| json!({
            "group": group, "filter": filter, "nodes": nodes,
        })).collect::<Vec<_>>(),
    })))
}

/// `GET /api/v1/bridges`: every running bridge, connected or not, with its counts.
async fn list_bridges(
    req: HttpRequest,
    state: web::Data<HttpState>,
) -> Result<HttpResponse, ApiError> {
    guard(&req, &state)?;
    let bridges = state.metrics.bridges.snapshots();
    Ok(HttpResponse::Ok().json(json!({
        "bridges": bridges.iter().map(|b| json!({
            "name": b.name, "address": b.address, "connected_to": b.connected_to, "connected": b.connected,
            "subscribed": b.subscribed, "queued": b.queued, "sent": b.sent,
            "received": b.received, "dropped": b.dropped,
        })).collect::<Vec<_>>(),
    })))
}

/// `offset`, `limit` and `search` of a list request, checked.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    offset: Option<usize>,
    limit: Option<usize>,
    pub(super) search: Option<String>,
    pub(super) filter: Option<String>,
}

/// Parses the query string; a 400 names what is wrong.
pub(super) fn list_query(req: &HttpRequest) -> Result<(usize, usize, ListQuery), ApiError> {
    let query: ListQuery = serde_urlencoded::from_str(req.query_string()).map_err(|e| {
        ApiError::bad_request(format!(
            "bad query string (offset and limit take whole numbers; search and filter, text): {e}"
        ))
    })?;
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and {MAX_LIMIT}"
        )));
    }
    Ok((query.offset.unwrap_or(0), limit, query))
}

/// The token check of every API route.
pub(super) fn guard(req: &HttpRequest, state: &HttpState) -> Result<(), ApiError> {
    state.authorize(req).map_err(ApiError::unauthorized)
}

fn protocol_name(protocol: crate::ProtocolVersion) -> &'static str {
    match protocol {
        crate::ProtocolVersion::V3_1 => "3.1",
        crate::ProtocolVersion::V3_1_1 => "3.1.1",
        crate::ProtocolVersion::V5 => "5",
    }
}

/// A client as JSON, with a connected client's counts asked of its Session.
async fn client_json(client: ClientSummary) -> Value {
    let report = match &client.session {
        Some(session) => ask_session(session.as_ref(), ToSession::Report).await,
        None => Some(SessionReport {
            inflight: client.stored_inflight,
            queued: client.stored_queued,
        }),
    };
    json!({
        "client_id": client.client_id,
        "connected": client.connected,
        "address": client.address.map(|a| a.to_string()),
        "protocol": client.protocol.map(protocol_name),
        "connected_since_ms": client.connected_since_ms,
        "session_expiry": (client.session_expiry != u32::MAX).then_some(client.session_expiry),
        "subscriptions": client.subscriptions.iter()
            .map(|(filter, options)| {
                let mut entry = options_json(options);
                entry["filter"] = json!(filter);
                entry
            })
            .collect::<Vec<_>>(),
        "inflight": report.map(|r| r.inflight),
        "queued": report.map(|r| r.queued),
        "will": client.will.as_ref().map(will_json),
    })
}

/// Asks a connected client's Session: `ask` wraps the channel its answer comes back on. `None`
/// if it does not answer within [`REPORT_TIMEOUT`] (a Session that has stopped drops the
/// message, and with it the sender: the wait ends at once).
pub(super) async fn ask_session<T>(
    session: &dyn SessionHandle,
    ask: impl FnOnce(tokio::sync::oneshot::Sender<T>) -> ToSession,
) -> Option<T> {
    let (reply, answer) = tokio::sync::oneshot::channel();
    session.send(ask(reply));
    tokio::time::timeout(REPORT_TIMEOUT, answer)
        .await
        .ok()
        .and_then(Result::ok)
}

/// `entry` with a message's payload added: as text (`payload`, `null` when not UTF-8) and as
/// base64 (`payload_base64`).
pub(super) fn with_payload(mut entry: Value, payload: &[u8]) -> Value {
    entry["payload"] = json!(std::str::from_utf8(payload).ok());
    entry["payload_base64"] = json!(base64::engine::general_purpose::STANDARD.encode(payload));
    entry
}

/// A client's will: topic, payload, QoS, RETAIN, Will Delay Interval, and for an offline
/// session's delayed will when it goes out (`due_ms`, Unix milliseconds).
fn will_json(summary: &WillSummary) -> Value {
    let will = &summary.will;
    let entry = json!({
        "topic": will.topic,
        "qos": will.qos as u8,
        "retain": will.retain,
        "delay": will.delay,
        "due_ms": summary.due_ms,
    });
    with_payload(entry, &will.payload)
}

/// A subscription's options as the API shows them: `qos`, and MQTT 5's `no_local`,
/// `retain_as_published`, `retain_handling` and `subscription_id` (`null` for none; an MQTT
/// 3.1.1 subscription has the defaults).
fn options_json(options: &SubscriptionOptions) -> Value {
    json!({
        "qos": options.qos as u8,
        "no_local": options.no_local,
        "retain_as_published": options.retain_as_published,
        "retain_handling": options.retain_handling,
        "subscription_id": options.id,
    })
}

/// Asks the Registry; a 503 when it does not answer.
pub(super) async fn ask<M>(state: &HttpState, msg: M) -> Result<M::Result, ApiError>
where
    M: actix::Message + Send + 'static,
    M::Result: Send,
    crate::registry::Registry: actix::Handler<M>,
{
    state.ask(msg).await.map_err(ApiError::unavailable)
}

pub(super) fn not_found(id: &str) -> ApiError {
    ApiError::new(404, format!("no client {id:?}"))
}

async fn list_clients(
    req: HttpRequest,
    state: web::Data<HttpState>,
) -> Result<HttpResponse, ApiError> {
    guard(&req, &state)?;
    let (offset, limit, query) = list_query(&req)?;
    let ask_page = ListClients {
        offset,
        limit,
        search: query.search,
    };
    let page = ask(&state, ask_page).await?;
    let mut clients = Vec::with_capacity(page.items.len());
    for client in page.items {
        clients.push(client_json(client).await);
    }
    Ok(HttpResponse::Ok().json(json!({
        "total": page.total, "offset": offset, "limit": limit, "clients": clients,
    })))
}

async fn get_client(
    req: HttpRequest,
    id: web::Path<String>,
    state: web::Data<HttpState>,
) -> Result<HttpResponse, ApiError> {
    guard(&req, &state)?;
    let client = ask(&state, GetClient(id.clone()))
        .await?
        .ok_or_else(|| not_found(&id))?;
    Ok(HttpResponse::Ok().json(client_json(client).await))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KickQuery {
    session: Option<bool>,
}

async fn kick_client(
    req: HttpRequest,
    id: web::Path<String>,
    state: web::Data<HttpState>,
) -> Result<HttpResponse, ApiError> {
    guard(&req, &state)?;
    let query: KickQuery = serde_urlencoded::from_str(req.query_string()).map_err(|e| {
        ApiError::bad_request(format!("bad query string (session=true|false): {e}"))
    })?;
    let kick = Kick {
        client_id: id.clone(),
        remove_session: query.session.unwrap_or(false),
    };
    let kicked = ask(&state, kick).await?.ok_or_else(|| not_found(&id))?;
    Ok(HttpResponse::Ok().json(json!({
        "client_id": id.as_str(),
        "disconnected": kicked.disconnected,
        "session_removed": kicked.session_removed,
    })))
}

async fn list_subscriptions(
    req: HttpRequest,
    state: web::Data<HttpState>,
) -> Result<HttpResponse, ApiError> {
    guard(&req, &state)?;
    let (offset, limit, query) = list_query(&req)?;
    let ask_page = ListSubscriptions {
        offset,
        limit,
        search: query.search,
    };
    let page = ask(&state, ask_page).await?;
    Ok(HttpResponse::Ok().json(json!({
        "total": page.total, "offset": offset, "limit": limit,
        "subscriptions": page.items.iter().map(|s| {
            let mut entry = options_json(&s.options);
            entry["client_id"] = json!(s.client_id);
            entry["filter"] = json!(s.filter);
            entry["connected"] = json!(s.connected);
            entry
        }).collect::<Vec<_>>(),
    })))
}

async fn list_retained(
    req: HttpRequest,
    state: web::Data<HttpState>,
) -> Result<HttpResponse, ApiError> {
    guard(&req, &state)?;
    let (offset, limit, query) = list_query(&req)?;
    let filter = query.filter.unwrap_or_else(|| "#".to_string());
    crate::topic::validate_filter(&filter).map_err(|e| {
        ApiError::bad_request(format!(
            "filter {filter:?} is not a valid topic filter: {e}"
        ))
    })?;
    let ask_page = ListRetained {
        filter,
        offset,
        limit,
    };
    let page = ask(&state, ask_page).await?;
    Ok(HttpResponse::Ok().json(json!({
        "total": page.total, "offset": offset, "limit": limit,
        "messages": page.items.iter().map(|m| {
            with_payload(json!({ "topic": m.topic, "qos": m.qos as u8 }), &m.payload)
        }).collect::<Vec<_>>(),
    })))
}

/// The body of `POST /publish`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody {
    topic: String,
    /// The payload as text.
    payload: Option<String>,
    /// Or as base64, for binary payloads.
    payload_base64: Option<String>,
    #[serde(default)]
    qos: u8,
    #[serde(default)]
    retain: bool,
}

/// The message a `POST /publish` body describes; a 400 says what is wrong with it.
fn message_of(body: &[u8]) -> Result<Message, ApiError> {
    let body: PublishBody = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "the body must be JSON {{\"topic\", \"payload\" or \"payload_base64\", \"qos\", \"retain\"}}: {e}"
        ))
    })?;
    crate::topic::validate_topic_name(&body.topic)
        .map_err(|e| ApiError::bad_request(format!("topic {:?}: {e}", body.topic)))?;
    if crate::topic::reserved_for_broker(&body.topic) {
        return Err(ApiError::bad_request(
            "topics under $SYS are the broker's own".into(),
        ));
    }
    let qos = match body.qos {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        2 => QoS::ExactlyOnce,
        other => {
            return Err(ApiError::bad_request(format!(
                "qos must be 0, 1 or 2, not {other}"
            )))
        }
    };
    let payload = match (body.payload, body.payload_base64) {
        (Some(text), None) => bytes::Bytes::from(text.into_bytes()),
        (None, Some(encoded)) => base64::engine::general_purpose::STANDARD
            .decode(encoded.as_bytes())
            .map(bytes::Bytes::from)
            .map_err(|e| ApiError::bad_request(format!("payload_base64 is not base64: {e}")))?,
        (None, None) => bytes::Bytes::new(),
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "give payload or payload_base64, not both".into(),
            ))
        }
    };
    Ok(Message::new(body.topic, payload, qos, body.retain))
}

/// The largest `POST /publish` body read: a 1 MiB payload in base64, and room for the rest.
const MAX_PUBLISH_BODY: usize = 1_500_000;

/// Reads a request body up to [`MAX_PUBLISH_BODY`]; a 413 that says so beyond it.
async fn read_body(mut payload: web::Payload) -> Result<bytes::BytesMut, ApiError> {
    use futures_util::StreamExt;
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request(format!("reading the body: {e}")))?;
        if body.len() + chunk.len() > MAX_PUBLISH_BODY {
            return Err(ApiError::new(
                413,
                format!("the body is over {MAX_PUBLISH_BODY} bytes"),
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

async fn publish(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<HttpState>,
) -> Result<HttpResponse, ApiError> {
    guard(&req, &state)?;
    let body = read_body(payload).await?;
    let message = message_of(&body)?;
    let deliveries = ask(&state, AdminPublish(message)).await?;
    Ok(HttpResponse::Ok().json(json!({ "deliveries": deliveries })))
}
