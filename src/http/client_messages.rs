//! `GET /api/v1/clients/{id}/messages`: what a client's session holds, for an operator
//! looking at a device that is behind or offline: its QoS 1/2 messages in flight (with packet
//! id and stage) then queued, in the order the client gets them, paged, and its inbound QoS 2
//! ids awaiting PUBREL. An offline session's come from the Registry, a connected client's from
//! its Session.

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};

use super::api::{ask, ask_session, guard, list_query, not_found, with_payload};
use super::{ApiError, HttpState};
use crate::registry::{ClientMessages, GetClientMessages, ToSession};
use crate::session_state::{HeldMessage, HeldMessages, InflightStage};

/// The handler of `GET /api/v1/clients/{id}/messages?offset=&limit=`.
pub(super) async fn client_messages(
    req: HttpRequest,
    id: web::Path<String>,
    state: web::Data<HttpState>,
) -> Result<HttpResponse, ApiError> {
    guard(&req, &state)?;
    let (offset, limit, query) = list_query(&req)?;
    if query.search.is_some() || query.filter.is_some() {
        return Err(ApiError::bad_request(
            "a client's messages take offset and limit only".into(),
        ));
    }
    let asked = GetClientMessages {
        client_id: id.clone(),
        offset,
        limit,
    };
    let (connected, held) = match ask(&state, asked).await?.ok_or_else(|| not_found(&id))? {
        ClientMessages::Stored(held) => (false, held),
        ClientMessages::Connected(session) => {
            let ask = |reply| ToSession::Messages {
                offset,
                limit,
                reply,
            };
            let held = ask_session(session.as_ref(), ask).await.ok_or_else(|| {
                ApiError::unavailable(&format!("client {:?} did not answer", id.as_str()))
            })?;
            (true, held)
        }
    };
    Ok(HttpResponse::Ok().json(page_json(&id, connected, offset, limit, held)))
}

fn page_json(id: &str, connected: bool, offset: usize, limit: usize, held: HeldMessages) -> Value {
    let now = std::time::Instant::now();
    json!({
        "client_id": id,
        "connected": connected,
        "total": held.total,
        "offset": offset,
        "limit": limit,
        "awaiting_pubrel": held.awaiting_pubrel,
        "messages": held.items.iter().map(|m| message_json(m, now)).collect::<Vec<_>>(),
    })
}

/// One held message: where it stands (`queued`, or the acknowledgement its packet id waits
/// for), and what the client gets.
fn message_json(held: &HeldMessage, now: std::time::Instant) -> Value {
    let delivery = &held.delivery;
    let message = &delivery.message;
    let (pid, state) = match held.sent {
        None => (None, "queued"),
        Some((pid, InflightStage::AwaitingPubAck)) => (Some(pid), "awaiting_puback"),
        Some((pid, InflightStage::AwaitingPubRec)) => (Some(pid), "awaiting_pubrec"),
        Some((pid, InflightStage::AwaitingPubComp)) => (Some(pid), "awaiting_pubcomp"),
    };
    let entry = json!({
        "state": state,
        "pid": pid,
        "topic": message.topic,
        "qos": delivery.qos as u8,
        "retain": delivery.retain,
        "message_expiry_interval": message.remaining_expiry(now),
        "subscription_ids": delivery.subscription_ids(),
    });
    with_payload(entry, &message.payload)
}
