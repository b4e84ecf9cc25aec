//! The router: DorkOS's routes (`dorkos`) and relay's own under
//! `/api/relay`, Prometheus text at `/metrics`, the panel at `/`; JSON
//! 404/405/501 answers; and the guard in front of them all (Host, Origin,
//! token).

// An early answer (`Err(Response)`) is returned once per request, at once:
// boxing it would buy nothing.
#![allow(clippy::result_large_err)]

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::body::Body;
use axum::extract::{OriginalUri, Path, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{MethodRouter, any, get, post};
use serde_json::{Value, json};

use super::query::{Query, decode};
use super::reply::{self, failure};
use super::state::App;
use super::{dorkos, prometheus, sse};
use crate::cmd::{ack, breakers, endpoints, limits, status};
use crate::context::Ctx;
use crate::error::{Error, Result};
use crate::store::index::Store;
use crate::store::reports;
use crate::vocab::EventKind;

/// The panel, embedded so nothing needs building at install.
const PANEL: &str = include_str!("../panel.html");

/// The address a request's connection came from.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub IpAddr);

/// `router` answering only `allow` methods (a JSON 405 otherwise).
fn only(router: MethodRouter<Arc<App>>, allow: &'static str) -> MethodRouter<Arc<App>> {
    router.fallback(move |method: Method, uri: OriginalUri| async move {
        not_allowed_with(&method, &decode(uri.path()), allow)
    })
}

/// Every route, behind the guard.
pub(super) fn router(app: Arc<App>, hub: Arc<sse::Hub>, mcp: crate::mcp::RelayMcp) -> Router {
    let api = Router::new()
        // DorkOS's core routes.
        .route(
            "/messages",
            only(
                get(dorkos::list_messages).post(dorkos::publish),
                "GET, POST",
            ),
        )
        .route("/messages/{id}", only(get(dorkos::message_detail), "GET"))
        .route(
            "/messages/{id}/trace",
            only(get(dorkos::message_trace), "GET"),
        )
        .route("/conversations", only(get(dorkos::conversations), "GET"))
        .route(
            "/endpoints",
            only(
                get(dorkos::list_endpoints).post(dorkos::register),
                "GET, POST",
            ),
        )
        .route("/endpoints/{*rest}", any(endpoint_path))
        .route(
            "/dead-letters",
            only(
                get(dorkos::dead_letters).delete(dorkos::delete_dead_letters),
                "GET, DELETE",
            ),
        )
        .route(
            "/dead-letters/aggregated",
            only(get(dorkos::aggregated), "GET"),
        )
        .route("/metrics", only(get(dorkos::relay_metrics), "GET"))
        .route("/trace/metrics", only(get(dorkos::trace_metrics), "GET"))
        .route("/stream", only(get(sse::stream), "GET"))
        // relay's own.
        .route("/status", only(get(status_json), "GET"))
        .route("/breakers", only(get(breakers_json), "GET"))
        .route("/breakers/reset", only(post(breakers_reset), "POST"))
        .route("/breakers/open", only(post(breakers_open), "POST"))
        .route("/limits", only(get(limits_json), "GET"))
        .route("/limits/reset", only(post(limits_reset), "POST"))
        .route("/backpressure", only(get(backpressure), "GET"))
        .route("/events", only(get(events), "GET"))
        .route("/redeliveries", only(get(redeliveries), "GET"))
        // DorkOS's adapter surface: not relay's.
        .route("/adapters", any(dorkos::not_implemented))
        .route("/adapters/{*rest}", any(dorkos::not_implemented))
        .route("/bindings", any(dorkos::not_implemented))
        .route("/bindings/{*rest}", any(dorkos::not_implemented))
        .route("/webhooks/{*rest}", any(dorkos::not_implemented))
        .route("/unclaimed-chats", any(dorkos::not_implemented))
        .route("/unclaimed-chats/{*rest}", any(dorkos::not_implemented));
    Router::new()
        .route("/", only(get(panel), "GET"))
        .route("/metrics", only(get(prometheus_text), "GET"))
        .nest("/api/relay", api)
        // The MCP server over streamable HTTP, as `relay.external.mcp`.
        .nest_service("/mcp", crate::mcp::http_service(mcp))
        .fallback(not_found)
        .layer(axum::Extension(hub))
        .layer(middleware::from_fn_with_state(Arc::clone(&app), guard))
        .with_state(app)
}

/// The request's `Host` (or its URI's authority).
fn host_of(req: &Request) -> Option<String> {
    req.uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
        })
}

/// Whether `origin` (an `Origin` value) is the server's own: the same
/// host and port as the request's `Host`.
fn same_origin(origin: &str, host: Option<&str>) -> bool {
    let rest = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    match (rest, host) {
        (Some(r), Some(h)) => r.eq_ignore_ascii_case(h),
        _ => false,
    }
}

/// Checked before routing (nothing is read, no probing for routes):
/// unless `--allow-remote`, the `Host` must be a loopback name (DNS
/// rebinding); a write (any method but GET/HEAD) must come from the
/// server's own origin (CSRF) and present the token when one is set; with
/// `--allow-remote` or from another host, every request presents it.
async fn guard(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let host = host_of(&req);
    if !app.allow_remote && !host.as_deref().is_some_and(loopback_host) {
        let named = host.map_or_else(
            || "a request without a Host header".to_string(),
            |h| format!("Host '{}'", h.escape_debug()),
        );
        return reply::error(
            StatusCode::FORBIDDEN,
            &format!(
                "{named} is refused: this server answers only localhost, 127.0.0.1 and [::1] (DNS rebinding protection); to serve other names, start it with --allow-remote and RELAY_SERVE_TOKEN set"
            ),
            Some("HOST_NOT_ALLOWED"),
        );
    }
    let write = !matches!(*req.method(), Method::GET | Method::HEAD);
    if write {
        let h = req.headers();
        let origin = h
            .get(header::ORIGIN)
            .map(|o| String::from_utf8_lossy(o.as_bytes()).into_owned());
        let cross_site = h
            .get("sec-fetch-site")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site"));
        let foreign = origin
            .as_deref()
            .is_some_and(|o| !same_origin(o, host.as_deref()));
        if foreign || cross_site {
            return reply::error(
                StatusCode::FORBIDDEN,
                &format!(
                    "{} {} from origin '{}' is refused: write requests are taken only from this server's own pages or from clients that send no Origin (CSRF protection)",
                    req.method(),
                    decode(req.uri().path()),
                    origin.unwrap_or_else(|| "cross-site".into()).escape_debug()
                ),
                Some("ORIGIN_NOT_ALLOWED"),
            );
        }
    }
    if let Some(token) = &app.token {
        let remote_peer = req
            .extensions()
            .get::<Peer>()
            .is_some_and(|p| !p.0.is_loopback());
        let needed = write || app.allow_remote || remote_peer;
        let bearer = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.strip_prefix("Bearer "));
        let query = Query::parse(req.uri().query());
        let presented = [bearer, query.get("token")];
        if needed && !presented.into_iter().flatten().any(|t| same(t, token)) {
            return reply::error(
                StatusCode::UNAUTHORIZED,
                &format!(
                    "missing or wrong token for {} {} (send Authorization: Bearer TOKEN or ?token=TOKEN, TOKEN being RELAY_SERVE_TOKEN)",
                    req.method(),
                    decode(req.uri().path())
                ),
                Some("AUTH_REQUIRED"),
            );
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
    let mut v = json!({ "error": "Not found", "code": "API_NOT_FOUND" });
    v["detail"] = json!(format!(
        "no route {method} {}; DorkOS's relay API and relay's own routes live under /api/relay/",
        decode(uri.path())
    ));
    reply::json(StatusCode::NOT_FOUND, &v)
}

/// A JSON 405 for `path`, which answers only `allow`.
fn not_allowed_with(method: &Method, path: &str, allow: &'static str) -> Response {
    let mut resp = reply::error(
        StatusCode::METHOD_NOT_ALLOWED,
        &format!("{method} is not allowed on {path}; use {allow}"),
        Some("METHOD_NOT_ALLOWED"),
    );
    resp.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    resp
}

/// Runs `f` on a worker and answers with its JSON.
async fn json_of<F>(app: &Arc<App>, f: F) -> Response
where
    F: FnOnce(&mut Ctx) -> Result<Value> + Send + 'static,
{
    match app.blocking(f).await {
        Ok(v) => reply::ok(&v),
        Err(e) => failure(&e),
    }
}

fn to_json(v: impl serde::Serialize) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

async fn panel() -> Response {
    reply::body(
        StatusCode::OK,
        "text/html; charset=utf-8",
        PANEL.to_string(),
    )
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
        Ok(t) => reply::body(StatusCode::OK, "text/plain; version=0.0.4", t),
        Err(e) => failure(&e),
    }
}

async fn status_json(State(app): State<Arc<App>>) -> Response {
    json_of(&app, |ctx| {
        Ok(to_json(status::snapshot_without_waiting(ctx, 50)?))
    })
    .await
}

async fn breakers_json(State(app): State<Arc<App>>) -> Response {
    json_of(&app, |ctx| {
        let now = ctx.clock.now_ms();
        Ok(json!({ "breakers": breakers::snapshot_without_waiting(ctx, now)? }))
    })
    .await
}

/// A write route's JSON body as an object (`{}` when none was sent).
async fn body_object(
    headers: &HeaderMap,
    body: Body,
) -> std::result::Result<serde_json::Map<String, Value>, Response> {
    match dorkos::read_json(headers, body).await? {
        None => Ok(serde_json::Map::new()),
        Some(Value::Object(o)) => Ok(o),
        Some(other) => Err(failure(&Error::Data(format!(
            "the body must be a JSON object, not {other}"
        )))),
    }
}

/// An optional string field, or the 400.
fn text_field(
    o: &serde_json::Map<String, Value>,
    key: &str,
) -> std::result::Result<Option<String>, Response> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(failure(&Error::Data(format!(
            "'{key}' must be a string, not {other}"
        )))),
    }
}

/// `POST /api/relay/breakers/reset` `{sender?, endpoint?, all?}`.
async fn breakers_reset(State(app): State<Arc<App>>, headers: HeaderMap, body: Body) -> Response {
    let o = match body_object(&headers, body).await {
        Ok(o) => o,
        Err(r) => return r,
    };
    let (sender, endpoint) = match (text_field(&o, "sender"), text_field(&o, "endpoint")) {
        (Ok(s), Ok(e)) => (s, e),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    let all = o.get("all").and_then(Value::as_bool).unwrap_or(false);
    if sender.is_none() && !all {
        return failure(&Error::Data(
            "say which breakers to reset: {\"sender\": S} (optionally with \"endpoint\") or {\"all\": true}".into(),
        ));
    }
    json_of(&app, move |ctx| {
        let reset = breakers::reset_pairs(ctx, sender.as_deref(), endpoint.as_deref(), all)?;
        Ok(json!({ "reset": reset }))
    })
    .await
}

/// `POST /api/relay/breakers/open` `{sender, endpoint, duration?}`
/// (`duration` ms or a string such as "30s"; default: the cooldown).
async fn breakers_open(State(app): State<Arc<App>>, headers: HeaderMap, body: Body) -> Response {
    let o = match body_object(&headers, body).await {
        Ok(o) => o,
        Err(r) => return r,
    };
    let (Ok(Some(sender)), Ok(Some(endpoint))) =
        (text_field(&o, "sender"), text_field(&o, "endpoint"))
    else {
        return failure(&Error::Data(
            "say which breaker to open: {\"sender\": S, \"endpoint\": E, \"duration\": \"30s\"}"
                .into(),
        ));
    };
    let duration = match o.get("duration") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) if n.as_u64().is_some_and(|v| v > 0) => {
            n.as_u64().map(std::time::Duration::from_millis)
        }
        Some(Value::String(s)) => match crate::clock::parse_positive_duration(s) {
            Ok(d) => Some(d),
            Err(e) => return failure(&Error::Data(format!("duration: {e}"))),
        },
        Some(other) => {
            return failure(&Error::Data(format!(
                "invalid duration {other}: use milliseconds > 0 or a string such as \"30s\""
            )));
        }
    };
    json_of(&app, move |ctx| {
        let (_, until) = breakers::force_open(ctx, &sender, &endpoint, duration)?;
        Ok(json!({
            "sender": sender, "endpoint": endpoint, "state": "open",
            "nextProbeAt": crate::clock::iso8601(until),
        }))
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

/// `POST /api/relay/limits/reset` `{sender}` or `{all: true}`.
async fn limits_reset(State(app): State<Arc<App>>, headers: HeaderMap, body: Body) -> Response {
    let o = match body_object(&headers, body).await {
        Ok(o) => o,
        Err(r) => return r,
    };
    let sender = match text_field(&o, "sender") {
        Ok(s) => s,
        Err(r) => return r,
    };
    let all = o.get("all").and_then(Value::as_bool).unwrap_or(false);
    if sender.is_none() && !all {
        return failure(&Error::Data(
            "say whose limit to reset: {\"sender\": S} or {\"all\": true}".into(),
        ));
    }
    json_of(&app, move |ctx| {
        Ok(json!({ "reset": limits::reset_senders(ctx, sender.as_deref(), all)? }))
    })
    .await
}

/// `/api/relay/endpoints/*`: `DELETE …/:subject`, `GET …/:subject/inbox`,
/// and relay's `POST …/:subject/ack` and `…/nack`.
async fn endpoint_path(
    State(app): State<Arc<App>>,
    method: Method,
    Path(rest): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (subject, action) = match rest.rsplit_once('/') {
        Some((s, a @ ("inbox" | "ack" | "nack"))) => (s.to_string(), Some(a)),
        _ => (rest.clone(), None),
    };
    match (&method, action) {
        (&Method::GET, Some("inbox")) => dorkos::inbox(app, subject, q).await,
        (&Method::POST, Some(verb @ ("ack" | "nack"))) => {
            settle(app, subject, verb == "nack", headers, body).await
        }
        (&Method::DELETE, _) => dorkos::unregister(app, rest).await,
        _ => {
            let allow = match action {
                Some("inbox") => "GET",
                Some(_) => "POST",
                None => "DELETE",
            };
            not_allowed_with(&method, &format!("/api/relay/endpoints/{rest}"), allow)
        }
    }
}

/// `POST /api/relay/endpoints/:subject/ack` `{ids}` and `…/nack`
/// `{ids, reason}`: finish messages a consumer claimed (`relay recv`).
async fn settle(
    app: Arc<App>,
    endpoint: String,
    nack: bool,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let o = match body_object(&headers, body).await {
        Ok(o) => o,
        Err(r) => return r,
    };
    let ids: Option<Vec<String>> = o
        .get("ids")
        .and_then(Value::as_array)
        .and_then(|a| a.iter().map(|v| v.as_str().map(str::to_string)).collect());
    let Some(ids) = ids.filter(|i| !i.is_empty()) else {
        return failure(&Error::Data(
            "the body needs \"ids\": a non-empty array of message ids".into(),
        ));
    };
    let reason = match text_field(&o, "reason") {
        Ok(r) => r,
        Err(r) => return r,
    };
    if nack && reason.as_deref().is_none_or(str::is_empty) {
        return failure(&Error::Data(
            "a nack needs \"reason\": why the messages failed".into(),
        ));
    }
    let reason = if nack { reason } else { None };
    match app
        .blocking(move |ctx| ack::finish_ids(ctx, &endpoint, &ids, reason.as_deref(), None))
        .await
    {
        Ok((done, problems)) if problems.is_empty() => reply::ok(&to_json(done)),
        Ok((done, problems)) => {
            let mut v = to_json(done);
            v["error"] = json!(problems.join("; "));
            v["code"] = json!("NOT_SETTLED");
            reply::json(StatusCode::CONFLICT, &v)
        }
        Err(e) => failure(&e),
    }
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

/// `GET /api/relay/redeliveries`: the latest 100 redeliveries and lease
/// expiries, newest first, each with the envelope where it is now (`new/`,
/// `cur/` or `failed/`; `null` once consumed).
async fn redeliveries(State(app): State<Arc<App>>) -> Response {
    json_of(&app, |ctx| {
        let _ = ctx.store()?.without_waiting(Store::ingest);
        let rows = ctx.store()?.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT id, at, kind, sender, endpoint, message_id, detail FROM events
                 WHERE kind IN (?1, ?2) ORDER BY id DESC LIMIT 100",
            )?;
            let kinds = [EventKind::Redelivered, EventKind::LeaseExpired];
            stmt.query_map(kinds, crate::store::index::event_from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()
        })?;
        let items: Vec<Value> = rows
            .into_iter()
            .map(|e| {
                let found = match (&e.endpoint, &e.message_id) {
                    (Some(ep), Some(id)) => {
                        let mb = crate::maildir::Mailbox::at(&ctx.home, ep);
                        ["new", "cur", "failed"]
                            .iter()
                            .find_map(|sub| mb.read_json(sub, id).map(|v| (*sub, v)))
                    }
                    _ => None,
                };
                let mut v = to_json(&e);
                v["where"] = json!(found.as_ref().map(|(sub, _)| *sub));
                v["envelope"] = found.map_or(Value::Null, |(_, env)| env);
                v
            })
            .collect();
        Ok(json!({ "redeliveries": items }))
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
