//! DorkOS's core relay routes under `/api/relay` (dorkos-http.md §3):
//! methods, query parameters, bodies, statuses, shapes and error bodies as
//! DorkOS serves them, over relay's own functions (a publish goes through
//! `relay send`'s pipeline). Fields relay adds are extra keys, which
//! DorkOS's schemas strip.

// An early answer (`Err(Response)`) is returned once per request, at once:
// boxing it would buy nothing.
#![allow(clippy::result_large_err)]

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::Response;
use serde_json::{Map, Value, json};

use super::query::Query;
use super::reply::{self, Invalid, failure, type_name};
use super::state::App;
use super::views;
use crate::clock::iso8601;
use crate::cmd::send::{self, Outgoing, Published};
use crate::cmd::{dlq, endpoints};
use crate::context::Ctx;
use crate::envelope::Budget;
use crate::error::{Error, Result};
use crate::maildir::{self, Mailbox, SUBDIRS};
use crate::pressure::Priority;
use crate::store::index::Store;
use crate::subject;
use crate::vocab::{Code, DorkStatus, Status};

/// The `status` filter of an inbox: DorkOS's statuses, or all.
const INBOX_STATUSES: [&str; 4] = [
    DorkStatus::Pending.as_str(),
    DorkStatus::Delivered.as_str(),
    DorkStatus::Failed.as_str(),
    "all",
];

/// The largest request body (DorkOS's `express.json` limit).
pub const MAX_BODY: usize = 1024 * 1024;
/// How long a request body may take to arrive.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Page size limits of the list routes.
const MAX_LIMIT: u64 = 100;
const DEFAULT_LIMIT: usize = 50;
/// Default window of `GET /trace/metrics` (DorkOS's 24 h).
const METRICS_WINDOW_MS: u64 = 24 * 3_600_000;

/// Senders only DorkOS's server may use (`initiate-consent.ts`).
fn reserved_sender(from: &str) -> bool {
    from.starts_with("agent:")
        || from.starts_with("relay.system.")
        || (from.starts_with("relay.human.") && from.ends_with(".bot"))
        || from.starts_with("relay.bridge.")
}

/// Endpoint namespaces DorkOS manages (`reserved-subjects.ts`).
const RESERVED_ENDPOINTS: [&str; 6] = [
    "relay.agent.",
    "relay.system.",
    "relay.human.",
    "relay.control.",
    "relay.inbox.dispatch.",
    "relay.inbox.query.",
];

/// The JSON body of a request: `None` when it is empty or not sent as
/// JSON (DorkOS then sees no body); an answer when it is too big, too slow
/// or not JSON.
pub async fn read_json(
    headers: &HeaderMap,
    body: Body,
) -> std::result::Result<Option<Value>, Response> {
    let too_big = || {
        reply::error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("the request body is over {MAX_BODY} bytes, the most this server reads"),
            Some("PAYLOAD_TOO_LARGE"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(too_big());
    }
    let bytes = match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, MAX_BODY)).await
    {
        Err(_) => {
            return Err(reply::error(
                StatusCode::REQUEST_TIMEOUT,
                &format!(
                    "the request body did not arrive within {} s",
                    BODY_TIMEOUT.as_secs()
                ),
                Some("REQUEST_TIMEOUT"),
            ));
        }
        Ok(Err(_)) => return Err(too_big()),
        Ok(Ok(b)) => b,
    };
    let json_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| {
            let t = t.trim().to_ascii_lowercase();
            t == "application/json" || (t.starts_with("application/") && t.ends_with("+json"))
        });
    if bytes.is_empty() || !json_type {
        return Ok(None);
    }
    serde_json::from_slice(&bytes).map(Some).map_err(|e| {
        reply::error(
            StatusCode::BAD_REQUEST,
            &format!("the request body is not JSON: {e}"),
            Some("INVALID_JSON"),
        )
    })
}

/// The body as an object, or the validation answer.
fn object(v: Option<&Value>) -> std::result::Result<&Map<String, Value>, Response> {
    match v {
        Some(Value::Object(o)) => Ok(o),
        other => {
            let mut bad = Invalid::default();
            bad.form(format!(
                "Invalid input: expected object, received {}",
                type_name(other)
            ));
            Err(bad.response())
        }
    }
}

/// A required string of at least one character.
fn required(o: &Map<String, Value>, key: &str, bad: &mut Invalid) -> String {
    match o.get(key) {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::String(_)) => {
            bad.field(key, "Too small: expected string to have >=1 characters");
            String::new()
        }
        other => {
            bad.field(
                key,
                format!(
                    "Invalid input: expected string, received {}",
                    type_name(other)
                ),
            );
            String::new()
        }
    }
}

/// An optional string.
fn optional(o: &Map<String, Value>, key: &str, bad: &mut Invalid) -> Option<String> {
    match o.get(key) {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        other => {
            bad.field(
                key,
                format!(
                    "Invalid input: expected string, received {}",
                    type_name(other)
                ),
            );
            None
        }
    }
}

/// An optional integer of at least `min` (problems filed under `field`:
/// Zod's flattened errors name only the top-level key).
fn optional_int(
    o: &Map<String, Value>,
    key: &str,
    field: &str,
    min: Option<i64>,
    bad: &mut Invalid,
) -> Option<i64> {
    let v = o.get(key)?;
    let Some(n) = v.as_f64() else {
        bad.field(
            field,
            format!(
                "{key}: Invalid input: expected number, received {}",
                type_name(Some(v))
            ),
        );
        return None;
    };
    #[allow(clippy::cast_possible_truncation, clippy::float_cmp)]
    if n.fract() != 0.0 || n.abs() > 9_007_199_254_740_991.0 {
        bad.field(
            field,
            format!("{key}: Invalid input: expected int, received number"),
        );
        return None;
    }
    #[allow(clippy::cast_possible_truncation)]
    let n = n as i64;
    if let Some(m) = min
        && n < m
    {
        bad.field(
            field,
            format!("{key}: Too small: expected number to be >={m}"),
        );
        return None;
    }
    Some(n)
}

/// A query value that must appear at most once.
fn single<'a>(q: &'a Query, key: &str, bad: &mut Invalid) -> Option<&'a str> {
    let all = q.all(key);
    if all.len() > 1 {
        bad.field(key, "Invalid input: expected string, received array");
        return None;
    }
    all.first().copied()
}

/// `limit`: `z.coerce.number().int().min(1).max(100).default(50)`.
fn limit(q: &Query, bad: &mut Invalid) -> usize {
    let Some(raw) = single(q, "limit", bad) else {
        return DEFAULT_LIMIT;
    };
    let t = raw.trim();
    let n: f64 = if t.is_empty() {
        0.0
    } else {
        t.parse().unwrap_or(f64::NAN)
    };
    if n.is_nan() {
        bad.field("limit", "Invalid input: expected number, received NaN");
    } else if n.fract() != 0.0 {
        bad.field("limit", "Invalid input: expected int, received number");
    } else if n < 1.0 {
        bad.field("limit", "Too small: expected number to be >=1");
    } else if n > MAX_LIMIT as f64 {
        bad.field("limit", "Too big: expected number to be <=100");
    } else {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        return n as usize;
    }
    DEFAULT_LIMIT
}

/// A value of `allowed`, or a validation problem.
fn one_of(
    q: &Query,
    key: &str,
    allowed: &[&'static str],
    bad: &mut Invalid,
) -> Option<&'static str> {
    let v = single(q, key, bad)?;
    let found = allowed.iter().find(|a| **a == v).copied();
    if found.is_none() {
        let list: Vec<String> = allowed.iter().map(|a| format!("\"{a}\"")).collect();
        bad.field(
            key,
            format!("Invalid option: expected one of {}", list.join("|")),
        );
    }
    found
}

/// Runs `f` on a worker with the journal moved into the index first, and
/// answers with its response (or the error's).
async fn with_index<F>(app: &Arc<App>, f: F) -> Response
where
    F: FnOnce(&mut Ctx) -> Result<Response> + Send + 'static,
{
    match app
        .blocking(|ctx| {
            // What sends appended since the poller looked, unless another
            // process holds the write lock now (no read waits on a writer;
            // a write takes the lock, and catches up, in its transaction).
            let _ = ctx.store()?.without_waiting(Store::ingest);
            f(ctx)
        })
        .await
    {
        Ok(r) => r,
        Err(e) => failure(&e),
    }
}

/// `POST /api/relay/messages`: publish through `relay send`'s pipeline.
pub async fn publish(State(app): State<Arc<App>>, headers: HeaderMap, body: Body) -> Response {
    let v = match read_json(&headers, body).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let o = match object(v.as_ref()) {
        Ok(o) => o,
        Err(r) => return r,
    };
    let mut bad = Invalid::default();
    let subject = required(o, "subject", &mut bad);
    let from = required(o, "from", &mut bad);
    let reply_to = optional(o, "replyTo", &mut bad);
    let (mut max_hops, mut ttl, mut calls) = (None, None, None);
    match o.get("budget") {
        None => {}
        Some(Value::Object(b)) => {
            max_hops = optional_int(b, "maxHops", "budget", Some(1), &mut bad);
            ttl = optional_int(b, "ttl", "budget", None, &mut bad);
            calls = optional_int(b, "callBudgetRemaining", "budget", Some(0), &mut bad);
        }
        other => bad.field(
            "budget",
            format!(
                "Invalid input: expected object, received {}",
                type_name(other)
            ),
        ),
    }
    // relay's additions: an idempotency key (also as a header), a trace
    // id to join, a priority lane.
    let key = optional(o, "idempotencyKey", &mut bad).or_else(|| {
        headers
            .get("idempotency-key")
            .and_then(|h| h.to_str().ok())
            .map(str::to_string)
    });
    let trace_id = optional(o, "traceId", &mut bad);
    let priority = optional(o, "priority", &mut bad);
    if !bad.is_empty() {
        return bad.response();
    }
    if reserved_sender(&from) {
        return reply::error(
            StatusCode::FORBIDDEN,
            &format!(
                "Sender \"{from}\" is a reserved server principal (agent:*, relay.system.*, relay.human.*.bot, relay.bridge.*) and cannot be used over HTTP"
            ),
            Some("RESERVED_SENDER"),
        );
    }
    let priority = match priority.as_deref() {
        None => Priority::Normal,
        Some(p) => match <Priority as clap::ValueEnum>::from_str(p, false) {
            Ok(p) => p,
            Err(_) => {
                return publish_failed(&format!(
                    "invalid priority '{p}': use critical, high, normal, low or background"
                ));
            }
        },
    };
    let payload = o.get("payload").cloned().unwrap_or(Value::Null);
    let size = payload.to_string().len() as u64;
    with_index(&app, move |ctx| {
        if size > ctx.config.max_payload_bytes {
            return Ok(reply::error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!(
                    "the payload is {size} bytes, more than maxPayloadBytes ({}); nothing was sent",
                    ctx.config.max_payload_bytes
                ),
                Some("PAYLOAD_TOO_LARGE"),
            ));
        }
        let now = ctx.clock.now_ms();
        let budget = (ttl.is_some() || calls.is_some()).then(|| {
            let mut b = Budget::fresh(
                max_hops.and_then(|m| u32::try_from(m).ok()).unwrap_or(5),
                now,
                3_600_000,
            );
            if let Some(t) = ttl {
                b.ttl = u64::try_from(t).unwrap_or(0);
            }
            if let Some(c) = calls {
                b.call_budget_remaining = u32::try_from(c).unwrap_or(u32::MAX);
            }
            b
        });
        let pressure = if subject::validate_pattern(&subject, "subject").is_ok() {
            pressure_before(ctx, &subject)?
        } else {
            Map::new()
        };
        let msg = Outgoing {
            subject,
            payload,
            from,
            reply_to,
            ttl: None,
            max_hops: max_hops.and_then(|m| u32::try_from(m).ok()),
            trace_id,
            priority,
            budget,
        };
        match send::publish(ctx, msg, key) {
            Ok(p) => Ok(reply::ok(&publish_result(p, pressure))),
            Err(e @ (Error::Data(_) | Error::Usage(_) | Error::Denied(_))) => {
                Ok(publish_failed(&e.to_string()))
            }
            Err(e) => Err(e),
        }
    })
    .await
}

fn publish_failed(message: &str) -> Response {
    reply::error(
        StatusCode::UNPROCESSABLE_ENTITY,
        message,
        Some("PUBLISH_FAILED"),
    )
}

/// Each matching endpoint's pressure before the delivery (pending / max,
/// at most 1), when backpressure is on.
fn pressure_before(ctx: &Ctx, subj: &str) -> Result<Map<String, Value>> {
    let bp = &ctx.config.reliability.backpressure;
    let mut out = Map::new();
    if !bp.enabled {
        return Ok(out);
    }
    let targets: Vec<String> = if subject::is_pattern(subj) {
        maildir::list_endpoints(&ctx.home)?
            .into_iter()
            .filter(|ep| subject::matches(subj, ep))
            .collect()
    } else if Mailbox::at(&ctx.home, subj).is_endpoint() {
        vec![subj.to_string()]
    } else {
        Vec::new()
    };
    for ep in targets {
        let depth = Mailbox::at(&ctx.home, &ep).depth().unwrap_or(0);
        #[allow(clippy::cast_precision_loss)]
        let p = (depth as f64 / bp.max_mailbox_size.max(1) as f64).min(1.0);
        out.insert(ep, json!(p));
    }
    Ok(out)
}

/// PublishResult, DorkOS's keys in DorkOS's order.
fn publish_result(p: Published, pressure: Map<String, Value>) -> Value {
    let mut m = Map::new();
    let mut rejected = Vec::new();
    match p {
        Published::Done {
            id,
            delivered,
            rejected: refused,
            ..
        } => {
            m.insert("messageId".into(), json!(id));
            m.insert("deliveredTo".into(), json!(delivered.len()));
            rejected.extend(refused.iter().map(send::Refusal::dorkos));
        }
        Published::NoMatch { id } => {
            m.insert("messageId".into(), json!(id));
            m.insert("deliveredTo".into(), json!(0));
        }
        Published::RateLimited {
            id,
            reason,
            retry_after_ms,
        } => {
            m.insert("messageId".into(), json!(id));
            m.insert("deliveredTo".into(), json!(0));
            rejected.push(send::dorkos_rejection(
                "*",
                Code::RateLimited.as_str(),
                &reason,
                false,
                retry_after_ms,
            ));
        }
        Published::Duplicate { original } => {
            m.insert("messageId".into(), json!(original));
            m.insert("deliveredTo".into(), json!(0));
            m.insert("duplicate".into(), json!(true));
        }
    }
    if !rejected.is_empty() {
        m.insert("rejected".into(), Value::Array(rejected));
    }
    if !pressure.is_empty() {
        m.insert("mailboxPressure".into(), Value::Object(pressure));
    }
    Value::Object(m)
}

/// `GET /api/relay/messages`.
pub async fn list_messages(State(app): State<Arc<App>>, RawQuery(q): RawQuery) -> Response {
    let q = Query::parse(q.as_deref());
    let mut bad = Invalid::default();
    let subject = single(&q, "subject", &mut bad).map(str::to_string);
    let status = one_of(&q, "status", &["new", "cur", "failed"], &mut bad);
    let from = single(&q, "from", &mut bad).map(str::to_string);
    let cursor = single(&q, "cursor", &mut bad).map(views::parse_cursor);
    let limit = limit(&q, &mut bad);
    let filter = match bad.or(views::ListFilter {
        subject,
        // DorkOS compares these with its own vocabulary and matches
        // nothing; relay gives them their meaning.
        statuses: status.map(|s| match s {
            "new" => vec![Status::Pending],
            "cur" => vec![Status::Claimed],
            _ => vec![Status::Failed],
        }),
        from,
        cursor,
        limit,
    }) {
        Ok(f) => f,
        Err(r) => return r,
    };
    with_index(&app, move |ctx| {
        let (rows, more) = ctx.store()?.read(|c| views::list(c, &filter))?;
        Ok(reply::ok(&page(
            "messages",
            rows.iter().map(views::Indexed::to_json).collect(),
            more.then(|| rows.last().map(views::Indexed::cursor))
                .flatten(),
        )))
    })
    .await
}

/// `{key: items, nextCursor?}`.
fn page(key: &str, items: Vec<Value>, next: Option<String>) -> Value {
    let mut m = Map::new();
    m.insert(key.into(), Value::Array(items));
    if let Some(n) = next {
        m.insert("nextCursor".into(), json!(n));
    }
    Value::Object(m)
}

fn not_found(what: &str) -> Response {
    reply::error(StatusCode::NOT_FOUND, what, None)
}

/// `GET /api/relay/messages/:id`.
pub async fn message_detail(State(app): State<Arc<App>>, Path(id): Path<String>) -> Response {
    with_index(&app, move |ctx| {
        Ok(match ctx.store()?.read(|c| views::detail(c, &id))? {
            Some(v) => reply::ok(&v),
            None => not_found("Message not found"),
        })
    })
    .await
}

/// `GET /api/relay/messages/:id/trace`.
pub async fn message_trace(State(app): State<Arc<App>>, Path(id): Path<String>) -> Response {
    with_index(&app, move |ctx| {
        Ok(match ctx.store()?.read(|c| views::trace(c, &id))? {
            Some((trace_id, spans)) => reply::ok(&json!({
                "traceId": trace_id,
                "spans": spans.iter().map(views::Span::to_json).collect::<Vec<_>>(),
            })),
            None => not_found("Trace not found"),
        })
    })
    .await
}

/// `GET /api/relay/trace/metrics`: DorkOS's DeliveryMetrics over the last
/// 24 h (`?since=DURATION` or `?since=all` for another window), then
/// relay's own figures.
pub async fn trace_metrics(State(app): State<Arc<App>>, RawQuery(q): RawQuery) -> Response {
    let since = Query::parse(q.as_deref()).get("since").map(str::to_string);
    with_index(&app, move |ctx| {
        let now = ctx.clock.now_ms();
        let since = match since.as_deref() {
            None => now.saturating_sub(METRICS_WINDOW_MS),
            Some("all") => 0,
            Some(s) => {
                let d = crate::clock::parse_duration(s).map_err(|e| {
                    Error::Data(format!("{e} (since: a duration such as 1h or 30m, or all)"))
                })?;
                now.saturating_sub(crate::clock::ms(d))
            }
        };
        let dork = ctx.store()?.read(|c| views::delivery_metrics(c, since))?;
        let mut v = crate::cmd::metrics::compute(ctx, since)?;
        if let (Value::Object(out), Value::Object(d)) = (&mut v, dork) {
            for (k, val) in d {
                out.insert(k, val);
            }
            out.insert(
                "since".into(),
                (since > 0)
                    .then(|| iso8601(since))
                    .map_or(Value::Null, Value::String),
            );
            out.insert(
                "relayTotalCopies".into(),
                json!(
                    out.get("endpoints")
                        .and_then(Value::as_array)
                        .map_or(0, |e| e
                            .iter()
                            .filter_map(|x| x["total"].as_u64())
                            .sum::<u64>())
                ),
            );
        }
        Ok(reply::ok(&v))
    })
    .await
}

/// `GET /api/relay/metrics`: DorkOS's RelayMetrics.
pub async fn relay_metrics(State(app): State<Arc<App>>) -> Response {
    with_index(&app, |ctx| {
        Ok(reply::ok(&ctx.store()?.read(views::relay_metrics)?))
    })
    .await
}

/// EndpointInfo (DorkOS's keys first), then relay's depth and pressure.
fn endpoint_info(ctx: &Ctx, e: &endpoints::EndpointInfo) -> Value {
    let mb = Mailbox::at(&ctx.home, &e.subject);
    let registered = std::fs::metadata(mb.dir())
        .and_then(|m| m.created().or_else(|_| m.modified()))
        .map_or(0, crate::clock::system_time_ms);
    let mut v = json!({
        "subject": e.subject,
        "hash": e.subject,
        "maildirPath": mb.dir().display().to_string(),
        "registeredAt": iso8601(registered),
    });
    if let Some(owner) = std::fs::read_to_string(mb.dir().join(".owner"))
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
    {
        v["owner"] = json!(owner);
    }
    if let (Value::Object(m), Value::Object(extra)) = (&mut v, json!(e)) {
        for (k, val) in extra {
            m.entry(k).or_insert(val);
        }
    }
    v
}

/// `GET /api/relay/endpoints`: an array of EndpointInfo.
pub async fn list_endpoints(State(app): State<Arc<App>>) -> Response {
    with_index(&app, |ctx| {
        let list: Vec<Value> = endpoints::infos(ctx)?
            .iter()
            .map(|e| endpoint_info(ctx, e))
            .collect();
        Ok(reply::ok(&Value::Array(list)))
    })
    .await
}

/// `POST /api/relay/endpoints`: `201` EndpointInfo.
pub async fn register(State(app): State<Arc<App>>, headers: HeaderMap, body: Body) -> Response {
    let v = match read_json(&headers, body).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let o = match object(v.as_ref()) {
        Ok(o) => o,
        Err(r) => return r,
    };
    let mut bad = Invalid::default();
    let subj = required(o, "subject", &mut bad);
    let _description = optional(o, "description", &mut bad);
    if !bad.is_empty() {
        return bad.response();
    }
    if RESERVED_ENDPOINTS.iter().any(|p| subj.starts_with(p)) {
        return reply::error(
            StatusCode::FORBIDDEN,
            &format!(
                "Subject \"{subj}\" is in a namespace DorkOS manages ({}); pick a subject outside it",
                RESERVED_ENDPOINTS.join(", ")
            ),
            None,
        );
    }
    with_index(&app, move |ctx| {
        let refuse = |m: String| Ok(reply::error(StatusCode::UNPROCESSABLE_ENTITY, &m, None));
        if let Err(e) = subject::validate_subject(&subj, "endpoint") {
            return refuse(e.to_string());
        }
        let names = maildir::mailbox_dir_names(&ctx.home)?;
        if names.contains(&subj) {
            return refuse(format!("Endpoint already registered: {subj}"));
        }
        if let Some(other) = maildir::case_twin(&subj, names.iter()) {
            return refuse(format!(
                "Endpoint '{subj}' differs only in case from '{other}'; mailbox names must not collide on case-insensitive filesystems"
            ));
        }
        let mb = Mailbox::at(&ctx.home, &subj);
        mb.create(&SUBDIRS)?;
        crate::home::sync_dir(&ctx.home.mailboxes())?;
        let info = endpoints::infos(ctx)?
            .into_iter()
            .find(|e| e.subject == subj)
            .ok_or_else(|| Error::NoEndpoint(format!("endpoint '{subj}' vanished as it was created")))?;
        Ok(reply::json(StatusCode::CREATED, &endpoint_info(ctx, &info)))
    })
    .await
}

pub(super) async fn unregister(app: Arc<App>, subj: String) -> Response {
    with_index(&app, move |ctx| {
        if subject::validate_subject(&subj, "endpoint").is_err()
            || !Mailbox::at(&ctx.home, &subj).is_endpoint()
        {
            return Ok(not_found("Endpoint not found"));
        }
        let deleted = endpoints::remove_endpoint(&ctx.home, &subj, true)?;
        Ok(reply::ok(
            &json!({ "success": true, "deletedMessages": deleted }),
        ))
    })
    .await
}

pub(super) async fn inbox(app: Arc<App>, subj: String, q: Option<String>) -> Response {
    let q = Query::parse(q.as_deref());
    let mut bad = Invalid::default();
    let status = one_of(&q, "status", &INBOX_STATUSES, &mut bad);
    let cursor = single(&q, "cursor", &mut bad).map(views::parse_cursor);
    let limit = limit(&q, &mut bad);
    if !bad.is_empty() {
        return bad.response();
    }
    // DorkOS's status (`all`: none) as the relay statuses it stands for.
    let statuses: Option<Vec<Status>> = status
        .map_or(Ok(DorkStatus::Pending), str::parse::<DorkStatus>)
        .ok()
        .map(|d| {
            Status::ALL
                .iter()
                .copied()
                .filter(|s| s.dorkos() == d)
                .collect()
        });
    with_index(&app, move |ctx| {
        if subject::validate_subject(&subj, "endpoint").is_err()
            || !Mailbox::at(&ctx.home, &subj).is_endpoint()
        {
            return Ok(not_found("Endpoint not found"));
        }
        let (rows, more) = ctx
            .store()?
            .read(|c| views::inbox(c, &subj, statuses.as_deref(), cursor.as_ref(), limit))?;
        let mb = Mailbox::at(&ctx.home, &subj);
        let items: Vec<Value> = rows
            .iter()
            .map(|r| {
                let file = match r.status {
                    Status::Pending | Status::Claimed => mb
                        .read_json("new", &r.id)
                        .or_else(|| mb.read_json("cur", &r.id)),
                    Status::Failed => mb.read_json("failed", &r.id),
                    Status::Acked => None,
                };
                let mut v = views::Indexed {
                    id: r.id.clone(),
                    subject: r.subject.clone(),
                    endpoint: r.endpoint.clone(),
                    status: r.status.dorkos(),
                    created_at: r.sent_at,
                    expires_at: r.expires_at,
                    sender: Some(r.sender.clone()),
                }
                .to_json();
                v["payload"] = file
                    .as_ref()
                    .and_then(|f| f.get("payload").cloned())
                    .unwrap_or(Value::Null);
                v["state"] = json!(r.status);
                v
            })
            .collect();
        let next = more
            .then(|| rows.last().map(|r| format!("{} {}", r.id, r.endpoint)))
            .flatten();
        Ok(reply::ok(&page("messages", items, next)))
    })
    .await
}

/// DeadLetterEntry objects (id ascending), of `endpoint` only if given.
fn dead_letter_entries(ctx: &Ctx, endpoint: Option<&str>) -> Result<Vec<Value>> {
    let now = ctx.clock.now_ms();
    let mut letters = dlq::collect(ctx, endpoint, true)?;
    letters.sort_by(|a, b| (&a.id, &a.endpoint).cmp(&(&b.id, &b.endpoint)));
    Ok(letters
        .into_iter()
        .map(|d| {
            let envelope = d.envelope.clone().filter(Value::is_object).or_else(|| {
                Mailbox::at(&ctx.home, &d.endpoint)
                    .read_reason(&d.id)
                    .map(|r| r.envelope)
                    .filter(Value::is_object)
            });
            json!({
                "messageId": d.id,
                "endpointHash": d.endpoint,
                "reason": d.reason.unwrap_or_else(|| "unknown".into()),
                "failedAt": d.failed_at.unwrap_or_else(|| iso8601(now)),
                "envelope": envelope,
                "code": d.code,
            })
        })
        .collect())
}

/// `GET /api/relay/dead-letters` (`?endpointHash=` for one directory).
pub async fn dead_letters(State(app): State<Arc<App>>, RawQuery(q): RawQuery) -> Response {
    let q = Query::parse(q.as_deref());
    let endpoint = q
        .get("endpointHash")
        .or_else(|| q.get("endpoint"))
        .map(str::to_string);
    with_index(&app, move |ctx| {
        Ok(reply::ok(&Value::Array(dead_letter_entries(
            ctx,
            endpoint.as_deref(),
        )?)))
    })
    .await
}

/// The group key of a dead letter: its envelope's `from` (or "unknown")
/// and its reason.
fn source_of(d: &Value) -> (String, String) {
    (
        d["envelope"]["from"]
            .as_str()
            .unwrap_or("unknown")
            .to_string(),
        d["reason"].as_str().unwrap_or("unknown").to_string(),
    )
}

/// `GET /api/relay/dead-letters/aggregated`.
pub async fn aggregated(State(app): State<Arc<App>>) -> Response {
    with_index(&app, |ctx| {
        let mut groups: Vec<((String, String), Value)> = Vec::new();
        for d in dead_letter_entries(ctx, None)? {
            let key = source_of(&d);
            let at = d["failedAt"].as_str().unwrap_or_default().to_string();
            match groups.iter_mut().find(|(k, _)| *k == key) {
                Some((_, g)) => {
                    g["count"] = json!(g["count"].as_u64().unwrap_or(0) + 1);
                    if at.as_str() < g["firstSeen"].as_str().unwrap_or_default() {
                        g["firstSeen"] = json!(at);
                    }
                    if at.as_str() > g["lastSeen"].as_str().unwrap_or_default() {
                        g["lastSeen"] = json!(at);
                    }
                }
                None => {
                    let g = json!({
                        "source": key.0, "reason": key.1, "count": 1,
                        "firstSeen": at, "lastSeen": at, "sample": d["envelope"],
                    });
                    groups.push((key, g));
                }
            }
        }
        Ok(reply::ok(&json!({
            "groups": groups.into_iter().map(|(_, g)| g).collect::<Vec<_>>()
        })))
    })
    .await
}

/// `DELETE /api/relay/dead-letters` with `{source, reason}`.
pub async fn delete_dead_letters(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let v = match read_json(&headers, body).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let field = |k: &str| {
        v.as_ref()
            .and_then(|v| v.get(k))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let (Some(source), Some(reason)) = (field("source"), field("reason")) else {
        return reply::error(
            StatusCode::BAD_REQUEST,
            "source and reason are required",
            None,
        );
    };
    with_index(&app, move |ctx| {
        let pairs: Vec<(String, String)> = dead_letter_entries(ctx, None)?
            .iter()
            .filter(|d| source_of(d) == (source.clone(), reason.clone()))
            .map(|d| {
                (
                    d["endpointHash"].as_str().unwrap_or_default().to_string(),
                    d["messageId"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        dlq::remove(
            ctx,
            &pairs,
            None,
            json!({ "count": pairs.len(), "source": source, "reason": reason }),
        )?;
        Ok(reply::ok(&json!({ "removed": pairs.len() })))
    })
    .await
}

/// `GET /api/relay/conversations`: requests (subjects under
/// `relay.agent.` or `relay.system.`) among the 50 newest rows, with the
/// label fallbacks DorkOS uses when it knows no session or agent.
pub async fn conversations(State(app): State<Arc<App>>) -> Response {
    with_index(&app, |ctx| {
        let filter = views::ListFilter {
            limit: DEFAULT_LIMIT,
            ..views::ListFilter::default()
        };
        let (rows, _) = ctx.store()?.read(|c| views::list(c, &filter))?;
        let mut out: Vec<Value> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for r in rows.iter().filter(|r| r.endpoint != views::STAR) {
            if !(r.subject.starts_with("relay.agent.") || r.subject.starts_with("relay.system."))
                || !seen.insert(r.id.clone())
            {
                continue;
            }
            let sender = rows
                .iter()
                .find(|s| s.id == r.id && s.endpoint == views::STAR)
                .and_then(|s| s.sender.clone())
                .unwrap_or_default();
            let responses = rows
                .iter()
                .filter(|x| {
                    x.endpoint == views::STAR
                        && x.subject.starts_with("relay.human.console.")
                        && x.subject == sender
                })
                .count();
            out.push(json!({
                "id": r.id,
                "direction": "outbound",
                "status": r.status,
                "from": { "label": "Unknown", "raw": sender },
                "to": { "label": r.subject, "raw": r.subject },
                "preview": "",
                "responseCount": responses,
                "sentAt": iso8601(r.created_at),
                "subject": r.subject,
                "traceId": r.id,
            }));
        }
        Ok(reply::ok(&json!({ "conversations": out })))
    })
    .await
}

/// Adapters, bindings, webhooks and unclaimed chats: not part of relay.
pub async fn not_implemented(method: Method, uri: axum::extract::OriginalUri) -> Response {
    reply::error(
        StatusCode::NOT_IMPLEMENTED,
        &format!(
            "{method} {} is DorkOS's adapter surface (adapters, bindings, webhooks, unclaimed chats), which relay serve does not implement; relay serves the core relay routes under /api/relay",
            uri.path()
        ),
        Some("NOT_IMPLEMENTED"),
    )
}
