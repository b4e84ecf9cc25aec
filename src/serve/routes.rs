//! The routes: thin handlers over the same functions the commands use, the
//! JSON 404/405 answers, and the guard (token or `Host`) in front of them.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, Request, State};
use axum::handler::Handler;
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};
use serde_json::{Value, json};

use super::query::{Query, decode};
use super::{App, api_error, failure, prometheus, sse};
use crate::cmd::{breakers, dlq, endpoints, limits, metrics, status, trace};
use crate::context::Ctx;
use crate::error::{Error, Result};
use crate::store::reports;

/// The panel, embedded so nothing needs building at install.
const PANEL: &str = include_str!("../panel.html");

/// Every route, behind the guard.
pub(super) fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", read(panel))
        .route("/metrics", read(prometheus_text))
        .route("/api/relay/status", read(status_json))
        .route("/api/relay/endpoints", read(endpoints_json))
        .route("/api/relay/trace/metrics", read(trace_metrics))
        .route("/api/relay/dead-letters", read(dead_letters))
        .route("/api/relay/breakers", read(breakers_json))
        .route("/api/relay/limits", read(limits_json))
        .route("/api/relay/backpressure", read(backpressure))
        .route("/api/relay/events", read(events))
        .route("/api/relay/messages/{id}/trace", read(message_trace))
        .route("/api/relay/stream", read(sse::stream))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(Arc::clone(&app), guard))
        .with_state(app)
}

/// A GET route; any other method is a JSON 405.
fn read<H, T>(handler: H) -> MethodRouter<Arc<App>>
where
    H: Handler<T, Arc<App>>,
    T: 'static,
{
    get(handler).fallback(not_allowed)
}

/// The token when one is set (checked before routing: no probing for
/// routes); otherwise the `Host` must be a loopback name.
async fn guard(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    match &app.token {
        Some(token) => {
            let bearer = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|h| h.to_str().ok())
                .and_then(|h| h.strip_prefix("Bearer "));
            let query = Query::parse(req.uri().query());
            let presented = [bearer, query.get("token")];
            if !presented.into_iter().flatten().any(|t| same(t, token)) {
                return api_error(
                    StatusCode::UNAUTHORIZED,
                    "missing or wrong token (send Authorization: Bearer TOKEN or ?token=TOKEN)",
                );
            }
        }
        None => {
            let host = req
                .uri()
                .authority()
                .map(|a| a.as_str().to_string())
                .or_else(|| {
                    req.headers()
                        .get(header::HOST)
                        .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
                });
            if !host.as_deref().is_some_and(loopback_host) {
                let named = host.map_or_else(
                    || "a request without a Host header".to_string(),
                    |h| format!("Host '{}'", h.escape_debug()),
                );
                return api_error(
                    StatusCode::FORBIDDEN,
                    &format!(
                        "{named} is refused: without RELAY_SERVE_TOKEN this server answers only localhost, 127.0.0.1 and [::1] (DNS rebinding protection); set RELAY_SERVE_TOKEN to serve other names"
                    ),
                );
            }
        }
    }
    next.run(req).await
}

/// Whether `host` (a `Host` value, port optional) names loopback.
fn loopback_host(host: &str) -> bool {
    let port_ok = |p: &str| p.is_empty() || p.parse::<u16>().is_ok();
    if let Some(rest) = host.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((ip, "")) => ip == "::1",
            Some((ip, port)) => ip == "::1" && port.strip_prefix(':').is_some_and(port_ok),
            None => false,
        };
    }
    let name = match host.split_once(':') {
        Some((name, port)) if port_ok(port) => name,
        Some(_) => return false,
        None => host,
    };
    name.eq_ignore_ascii_case("localhost") || name == "127.0.0.1"
}

/// Equality that takes as long whatever the first difference.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

async fn not_found(method: Method, uri: Uri) -> Response {
    api_error(
        StatusCode::NOT_FOUND,
        &format!(
            "no route {method} {}; the API lives under /api/relay/",
            decode(uri.path())
        ),
    )
}

async fn not_allowed(method: Method, uri: Uri) -> Response {
    let mut resp = api_error(
        StatusCode::METHOD_NOT_ALLOWED,
        &format!("{method} is not allowed on {}; use GET", decode(uri.path())),
    );
    resp.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("GET"));
    resp
}

/// A 200 with `body` as `content_type`.
fn ok(content_type: &'static str, body: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

/// Runs `f` on a worker and answers with its JSON.
async fn json_of<F>(app: &Arc<App>, f: F) -> Response
where
    F: FnOnce(&mut Ctx) -> Result<Value> + Send + 'static,
{
    match app.blocking(f).await {
        Ok(v) => ok("application/json", v.to_string()),
        Err(e) => failure(&e),
    }
}

fn to_json(v: impl serde::Serialize) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

async fn panel() -> Response {
    ok("text/html; charset=utf-8", PANEL.to_string())
}

async fn prometheus_text(State(app): State<Arc<App>>) -> Response {
    let serving = prometheus::Serving {
        connections: app.connections.load(Ordering::SeqCst),
        streams: app.streams.load(Ordering::SeqCst),
    };
    match app
        .blocking(move |ctx| prometheus::text(ctx, &serving))
        .await
    {
        Ok(t) => ok("text/plain; version=0.0.4", t),
        Err(e) => failure(&e),
    }
}

async fn status_json(State(app): State<Arc<App>>) -> Response {
    json_of(&app, |ctx| Ok(to_json(status::snapshot(ctx, 50)?))).await
}

async fn endpoints_json(State(app): State<Arc<App>>) -> Response {
    json_of(&app, |ctx| {
        Ok(json!({ "endpoints": endpoints::infos(ctx)? }))
    })
    .await
}

async fn trace_metrics(State(app): State<Arc<App>>, RawQuery(q): RawQuery) -> Response {
    let since = Query::parse(q.as_deref()).get("since").map(str::to_string);
    json_of(&app, move |ctx| {
        let since = match since {
            Some(s) => {
                let d = crate::clock::parse_duration(&s).map_err(Error::Data)?;
                ctx.clock.now_ms().saturating_sub(crate::clock::ms(d))
            }
            None => 0,
        };
        metrics::compute(ctx, since)
    })
    .await
}

async fn dead_letters(State(app): State<Arc<App>>, RawQuery(q): RawQuery) -> Response {
    let endpoint = Query::parse(q.as_deref())
        .get("endpoint")
        .map(str::to_string);
    json_of(&app, move |ctx| {
        Ok(json!({ "deadLetters": dlq::collect(ctx, endpoint.as_deref(), false)? }))
    })
    .await
}

async fn breakers_json(State(app): State<Arc<App>>) -> Response {
    json_of(&app, |ctx| {
        let now = ctx.clock.now_ms();
        Ok(json!({ "breakers": breakers::snapshot(ctx, now)? }))
    })
    .await
}

async fn limits_json(State(app): State<Arc<App>>) -> Response {
    json_of(&app, |ctx| {
        let now = ctx.clock.now_ms();
        Ok(json!({
            "enabled": ctx.config.reliability.rate_limit.enabled,
            "limits": limits::snapshot(ctx, now)?,
        }))
    })
    .await
}

async fn backpressure(State(app): State<Arc<App>>) -> Response {
    json_of(&app, |ctx| {
        let bp = ctx.config.reliability.backpressure.clone();
        let warn_at = bp.pressure_warning_at;
        let rows: Vec<Value> = endpoints::infos(ctx)?
            .into_iter()
            .map(|e| {
                let level = match e.pressure {
                    Some(p) if p >= 1.0 => "full",
                    Some(p) if p >= warn_at => "warning",
                    Some(_) => "ok",
                    None => "off",
                };
                json!({ "endpoint": e.subject, "depth": e.depth, "capacity": e.capacity,
                        "pressure": e.pressure, "level": level })
            })
            .collect();
        Ok(json!({ "enabled": bp.enabled, "warningAt": warn_at, "endpoints": rows }))
    })
    .await
}

async fn events(State(app): State<Arc<App>>, RawQuery(q): RawQuery) -> Response {
    let after: i64 = Query::parse(q.as_deref())
        .get("after")
        .and_then(|a| a.parse().ok())
        .unwrap_or(0);
    json_of(&app, move |ctx| {
        let events = ctx
            .store()?
            .read(|c| reports::events_after(c, after, 0, &[], 500))?;
        Ok(json!({ "events": events }))
    })
    .await
}

async fn message_trace(
    State(app): State<Arc<App>>,
    uri: Uri,
    id: std::result::Result<Path<String>, PathRejection>,
) -> Response {
    let id = match id {
        Ok(Path(id)) if !id.is_empty() => id,
        Ok(_) => return not_found(Method::GET, uri).await,
        Err(e) => return api_error(StatusCode::BAD_REQUEST, &e.body_text()),
    };
    json_of(&app, move |ctx| {
        let Some((trace, spans)) = trace::lookup(ctx, &id)? else {
            return Err(Error::NoInput(format!("no message or trace '{id}'")));
        };
        Ok(json!({ "traceId": trace, "spans": spans }))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_names_with_any_port() {
        for ok in [
            "localhost",
            "LocalHost:4242",
            "127.0.0.1",
            "127.0.0.1:1",
            "[::1]",
            "[::1]:4242",
        ] {
            assert!(loopback_host(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:4242",
            "localhost.evil.example",
            "127.0.0.1.nip.io",
            "127.0.0.2",
            "localhost:x",
            "[::1]x",
            "[::2]:80",
            "::1",
            "",
        ] {
            assert!(!loopback_host(bad), "{bad}");
        }
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(same("s3cret", "s3cret"));
        assert!(!same("s3cret", "s3cre"));
        assert!(!same("s3cret", "s3creT"));
    }
}
