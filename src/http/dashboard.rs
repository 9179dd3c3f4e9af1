//! The live dashboard: `GET /` serves one page (HTML, CSS and script embedded in the binary: no
//! CDN, no build step), and `GET /api/v1/events` streams the [`Feed`](super::feed::Feed) to it
//! as server-sent events. The page reads everything else from the admin API, paged and searched
//! on the server, so it stays usable with 10k clients.

use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use futures_util::stream::{self, StreamExt};
use tokio::sync::broadcast::error::RecvError;

use super::feed::Subscribe;
use super::{error, unauthorized, HttpState};

/// The page.
const PAGE: &str = include_str!("dashboard.html");

/// `GET /`: the dashboard. It holds no data; with `http.token` set it asks for the token and
/// sends it with every request.
pub async fn index() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header(("Cache-Control", "no-cache"))
        .body(PAGE)
}

fn sse(data: &str) -> Result<Bytes, actix_web::Error> {
    Ok(Bytes::from(format!("data: {data}\n\n")))
}

/// `GET /api/v1/events`: the recent lifecycle events, then every new one and the counters once
/// a second, as server-sent events (one JSON object per `data:` line).
pub async fn events(req: HttpRequest, state: web::Data<HttpState>) -> HttpResponse {
    if let Err(why) = state.authorize(&req) {
        return unauthorized(why);
    }
    let Ok((recent, receiver)) = state.feed.send(Subscribe).await else {
        return error(503, "the event feed has stopped");
    };
    let recent = stream::iter(recent.into_iter().map(|event| sse(&event)));
    let live = stream::unfold(receiver, |mut receiver| async move {
        match receiver.recv().await {
            Ok(event) => Some((sse(&event), receiver)),
            // A page that fell behind misses some events, and is told so.
            Err(RecvError::Lagged(missed)) => {
                let notice = format!(r#"{{"type":"missed","count":{missed}}}"#);
                Some((sse(&notice), receiver))
            }
            Err(RecvError::Closed) => None,
        }
    });
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .streaming(recent.chain(live))
}
