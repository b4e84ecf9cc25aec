//! `relay serve`: a read-only HTTP API mirroring DorkOS's relay routes plus
//! ours for the reliability layer, an SSE stream, Prometheus metrics, and
//! the live panel (one embedded page). Loopback only unless asked, and then
//! only with a token.

use std::io::{BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::cli::ServeArgs;
use crate::cmd::{breakers, dlq, endpoints, limits, metrics, status};
use crate::config::{self, Config};
use crate::context::Ctx;
use crate::error::{Error, Result};
use crate::http::{self, Request};
use crate::store::reports;
use crate::subject;

/// The panel, embedded so nothing needs building at install.
const PANEL: &str = include_str!("../panel.html");
/// Connections served at once; more get 503.
const MAX_CONNECTIONS: usize = 64;
/// How often the SSE stream looks for news.
const STREAM_POLL: Duration = Duration::from_millis(250);
/// Comment lines that keep idle SSE connections open through proxies.
const KEEPALIVE: Duration = Duration::from_secs(15);
/// Delivery-latency histogram bounds (ms) for `/metrics`.
const LATENCY_BOUNDS_MS: [u64; 10] = [1, 5, 10, 50, 100, 500, 1000, 5000, 30_000, 300_000];

/// What every connection thread shares.
struct Shared {
    home: PathBuf,
    token: Option<String>,
    /// The last config that parsed: a bad edit keeps serving with it.
    config: Mutex<Config>,
    active: AtomicUsize,
}

/// Runs `relay serve` until killed.
pub fn run(ctx: &Ctx, args: &ServeArgs) -> Result<()> {
    let token = std::env::var("RELAY_SERVE_TOKEN")
        .ok()
        .filter(|t| !t.is_empty());
    if !args.listen.ip().is_loopback() {
        if !args.allow_remote {
            return Err(Error::Usage(format!(
                "refusing to listen on {} (not loopback) without --allow-remote",
                args.listen
            )));
        }
        if token.is_none() {
            return Err(Error::Usage(format!(
                "listening on {} needs RELAY_SERVE_TOKEN set: every request must present it",
                args.listen
            )));
        }
    }
    let listener = TcpListener::bind(args.listen).map_err(|e| Error::Io {
        what: format!("cannot listen on {}", args.listen),
        source: e,
    })?;
    let addr = listener.local_addr().map_err(|e| Error::Io {
        what: "cannot read the listening address".into(),
        source: e,
    })?;
    let shared = Arc::new(Shared {
        home: ctx.home.root().to_path_buf(),
        token,
        config: Mutex::new(ctx.config.clone()),
        active: AtomicUsize::new(0),
    });
    // The URL on stdout (scripts read it), the rest for people on stderr.
    crate::output::line(&format!("http://{addr}/"))?;
    eprintln!(
        "relay: serving {} on http://{addr}/ (panel at /, API under /api/relay/, Prometheus at /metrics){}",
        ctx.home.root().display(),
        if shared.token.is_some() {
            "; token required"
        } else {
            ""
        }
    );
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let shared = Arc::clone(&shared);
        if shared.active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            shared.active.fetch_sub(1, Ordering::SeqCst);
            let mut s = stream;
            let _ = error(&mut s, 503, "too many connections; retry shortly");
            continue;
        }
        std::thread::spawn(move || {
            let _ = serve_connection(&shared, stream);
            shared.active.fetch_sub(1, Ordering::SeqCst);
        });
    }
    Ok(())
}

fn serve_connection(shared: &Shared, stream: TcpStream) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    let req = match http::read_request(&mut reader) {
        Ok(Some(r)) => r,
        Ok(None) => return Ok(()),
        Err(e) => return error(&mut out, 400, &format!("bad request: {e}")),
    };
    if let Some(t) = &shared.token {
        let bearer = req
            .header("authorization")
            .and_then(|h| h.strip_prefix("Bearer "));
        if bearer != Some(t.as_str()) && req.param("token") != Some(t.as_str()) {
            return error(
                &mut out,
                401,
                "missing or wrong token (send Authorization: Bearer TOKEN or ?token=TOKEN)",
            );
        }
    }
    let known = route_exists(&req.path);
    if req.method != "GET" {
        return if known {
            let body = json!({ "error": { "code": 405, "message": format!("{} is not allowed on {}; use GET", req.method, req.path) } });
            http::respond(
                &mut out,
                405,
                "application/json",
                body.to_string().as_bytes(),
                &[("Allow", "GET")],
            )
        } else {
            not_found(&mut out, &req)
        };
    }
    if req.path == "/api/relay/stream" {
        return stream_events(shared, &req, &mut out);
    }
    let mut ctx = match request_ctx(shared) {
        Ok(c) => c,
        Err(e) => return error(&mut out, 500, &e.to_string()),
    };
    match handle(&mut ctx, &req) {
        Ok(Some((ctype, body))) => http::respond(&mut out, 200, ctype, body.as_bytes(), &[]),
        Ok(None) => not_found(&mut out, &req),
        Err(Error::NoInput(m) | Error::NoEndpoint(m)) => error(&mut out, 404, &m),
        Err(Error::Data(m) | Error::Usage(m)) => error(&mut out, 400, &m),
        Err(e) => error(&mut out, 500, &e.to_string()),
    }
}

/// A context for one request, with the current config (or the last good one).
fn request_ctx(shared: &Shared) -> Result<Ctx> {
    let mut ctx = Ctx::new(Some(shared.home.clone()), true, false)?;
    let mut last = shared
        .config
        .lock()
        .map_err(|_| Error::Config("config lock poisoned".into()))?;
    if let Ok(c) = config::load(&ctx.home.config_file()) {
        *last = c;
    }
    ctx.config = last.clone();
    Ok(ctx)
}

fn route_exists(path: &str) -> bool {
    matches!(
        path,
        "/" | "/metrics"
            | "/api/relay/status"
            | "/api/relay/endpoints"
            | "/api/relay/trace/metrics"
            | "/api/relay/dead-letters"
            | "/api/relay/breakers"
            | "/api/relay/limits"
            | "/api/relay/backpressure"
            | "/api/relay/events"
            | "/api/relay/stream"
    ) || trace_id(path).is_some()
}

/// `{id}` of `/api/relay/messages/{id}/trace`.
fn trace_id(path: &str) -> Option<&str> {
    path.strip_prefix("/api/relay/messages/")?
        .strip_suffix("/trace")
        .filter(|id| !id.is_empty() && !id.contains('/'))
}

/// The body of a GET route, or `None` for an unknown path.
fn handle(ctx: &mut Ctx, req: &Request) -> Result<Option<(&'static str, String)>> {
    const JSON: &str = "application/json";
    let now = ctx.clock.now_ms();
    let body: Value = match req.path.as_str() {
        "/" => return Ok(Some(("text/html; charset=utf-8", PANEL.to_string()))),
        "/metrics" => return prometheus(ctx, now).map(|t| Some(("text/plain; version=0.0.4", t))),
        "/api/relay/status" => {
            serde_json::to_value(status::snapshot(ctx, 50)?).unwrap_or(Value::Null)
        }
        "/api/relay/endpoints" => json!({ "endpoints": endpoints::infos(ctx)? }),
        "/api/relay/trace/metrics" => {
            let since = match req.param("since") {
                Some(s) => {
                    let d = crate::clock::parse_duration(s).map_err(Error::Data)?;
                    now.saturating_sub(crate::clock::ms(d))
                }
                None => 0,
            };
            metrics::compute(ctx, since)?
        }
        "/api/relay/dead-letters" => {
            json!({ "deadLetters": dlq::collect(ctx, req.param("endpoint"), false)? })
        }
        "/api/relay/breakers" => json!({ "breakers": breakers::snapshot(ctx, now)? }),
        "/api/relay/limits" => json!({
            "enabled": ctx.config.reliability.rate_limit.enabled,
            "limits": limits::snapshot(ctx, now)?,
        }),
        "/api/relay/backpressure" => {
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
            json!({ "enabled": bp.enabled, "warningAt": warn_at, "endpoints": rows })
        }
        "/api/relay/events" => {
            let after: i64 = req.param("after").and_then(|a| a.parse().ok()).unwrap_or(0);
            let events = ctx
                .store()?
                .read(|c| reports::events_after(c, after, 0, &[], 500))?;
            json!({ "events": events })
        }
        path => match trace_id(path) {
            Some(id) => {
                let Some((trace, spans)) = super::trace::lookup(ctx, id)? else {
                    return Err(Error::NoInput(format!("no message or trace '{id}'")));
                };
                json!({ "traceId": trace, "spans": spans })
            }
            None => return Ok(None),
        },
    };
    Ok(Some((JSON, body.to_string())))
}

fn error(out: &mut impl Write, code: u16, message: &str) -> std::io::Result<()> {
    let body = json!({ "error": { "code": code, "message": message } });
    http::respond(
        out,
        code,
        "application/json",
        body.to_string().as_bytes(),
        &[],
    )
}

fn not_found(out: &mut impl Write, req: &Request) -> std::io::Result<()> {
    error(
        out,
        404,
        &format!(
            "no route {} {}; the API lives under /api/relay/",
            req.method, req.path
        ),
    )
}

/// `GET /api/relay/stream?subject=PATTERN`: server-sent events with the
/// seed's names: `relay_connected`, then `relay_message` for new messages at
/// matching endpoints, `relay_backpressure` for backpressure decisions and
/// `relay_signal` for every other event.
fn stream_events(shared: &Shared, req: &Request, out: &mut TcpStream) -> std::io::Result<()> {
    let pattern = req.param("subject").unwrap_or(">").to_string();
    if let Err(e) = subject::validate_pattern(&pattern, "subject filter") {
        return error(out, 400, &e.to_string());
    }
    let mut ctx = match request_ctx(shared) {
        Ok(c) => c,
        Err(e) => return error(out, 500, &e.to_string()),
    };
    let mut last_event = match ctx.store().and_then(|s| s.read(reports::last_event_id)) {
        Ok(id) => id,
        Err(e) => return error(out, 500, &e.to_string()),
    };
    if let Some(id) = req.header("last-event-id").and_then(|v| v.parse().ok()) {
        last_event = id;
    }
    write!(
        out,
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n"
    )?;
    sse(out, None, "relay_connected", &json!({ "pattern": pattern }))?;
    let mut since = ctx.clock.now_ms();
    let mut seen: std::collections::HashSet<(u64, String, String)> =
        std::collections::HashSet::new();
    let mut quiet = Instant::now();
    loop {
        std::thread::sleep(STREAM_POLL);
        let Ok(store) = ctx.store() else { continue };
        // Sends append to the journal; move what they wrote into the index.
        let _ = store.ingest();
        let messages = store
            .read(|c| reports::messages_since(c, since))
            .unwrap_or_default();
        let events = store
            .read(|c| reports::events_after(c, last_event, 0, &[], 500))
            .unwrap_or_default();
        let mut wrote = false;
        for m in messages {
            since = since.max(m.sent_at);
            if !seen.insert((m.sent_at, m.endpoint.clone(), m.id.clone()))
                || !subject::matches(&pattern, &m.endpoint)
            {
                continue;
            }
            sse(out, None, "relay_message", &json!(m))?;
            wrote = true;
        }
        // Forget what can no longer come back from `messages_since`.
        seen.retain(|(at, _, _)| *at >= since);
        for e in events {
            last_event = e.id;
            let concerned = e
                .endpoint
                .as_deref()
                .or(e.sender.as_deref())
                .unwrap_or("relay");
            if pattern != ">" && !subject::matches(&pattern, concerned) {
                continue;
            }
            let name = if e.kind.starts_with("backpressure") {
                "relay_backpressure"
            } else {
                "relay_signal"
            };
            sse(out, Some(e.id), name, &json!(e))?;
            wrote = true;
        }
        if wrote {
            quiet = Instant::now();
        } else if quiet.elapsed() >= KEEPALIVE {
            out.write_all(b": keepalive\n\n")?;
            out.flush()?;
            quiet = Instant::now();
        }
    }
}

fn sse(out: &mut impl Write, id: Option<i64>, event: &str, data: &Value) -> std::io::Result<()> {
    if let Some(id) = id {
        writeln!(out, "id: {id}")?;
    }
    write!(out, "event: {event}\ndata: {data}\n\n")?;
    out.flush()
}

/// Prometheus text exposition (version 0.0.4), names prefixed `relay_`.
fn prometheus(ctx: &mut Ctx, now: u64) -> Result<String> {
    let mut t = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: Vec<(String, String)>| {
        t.push_str(&format!(
            "# HELP relay_{name} {help}\n# TYPE relay_{name} {kind}\n"
        ));
        for (labels, value) in samples {
            t.push_str(&format!("relay_{name}{labels} {value}\n"));
        }
    };
    let label = |pairs: &[(&str, &str)]| -> String {
        let inner: Vec<String> = pairs
            .iter()
            .map(|(k, v)| {
                format!(
                    "{k}=\"{}\"",
                    v.replace('\\', "\\\\")
                        .replace('"', "\\\"")
                        .replace('\n', "\\n")
                )
            })
            .collect();
        format!("{{{}}}", inner.join(","))
    };
    let eps = endpoints::infos(ctx)?;
    metric(
        "mailbox_depth",
        "gauge",
        "Messages in new/ plus cur/.",
        eps.iter()
            .map(|e| (label(&[("endpoint", &e.subject)]), e.depth.to_string()))
            .collect(),
    );
    metric(
        "mailbox_capacity",
        "gauge",
        "Backpressure capacity (maxMailboxSize).",
        eps.iter()
            .filter_map(|e| Some((label(&[("endpoint", &e.subject)]), e.capacity?.to_string())))
            .collect(),
    );
    metric(
        "mailbox_pressure",
        "gauge",
        "Depth divided by capacity.",
        eps.iter()
            .filter_map(|e| Some((label(&[("endpoint", &e.subject)]), e.pressure?.to_string())))
            .collect(),
    );
    metric(
        "dead_letters",
        "gauge",
        "Dead letters in failed/.",
        eps.iter()
            .map(|e| (label(&[("endpoint", &e.subject)]), e.failed.to_string()))
            .collect(),
    );
    let brs = breakers::snapshot(ctx, now)?;
    let pair =
        |b: &breakers::BreakerInfo| label(&[("sender", &b.sender), ("endpoint", &b.endpoint)]);
    metric(
        "breaker_state",
        "gauge",
        "Circuit breaker per pair: 0 closed, 1 half-open, 2 open.",
        brs.iter()
            .map(|b| {
                let state = match b.state {
                    "open" => "2",
                    "half-open" => "1",
                    _ => "0",
                };
                (pair(b), state.to_string())
            })
            .collect(),
    );
    metric(
        "breaker_trips_total",
        "counter",
        "Times the pair's breaker opened.",
        brs.iter().map(|b| (pair(b), b.trips.to_string())).collect(),
    );
    let lims = limits::snapshot(ctx, now)?;
    metric(
        "rate_limit_tokens",
        "gauge",
        "Tokens left in the sender's bucket.",
        lims.iter()
            .map(|l| (label(&[("sender", &l.sender)]), l.tokens_left.to_string()))
            .collect(),
    );
    metric(
        "rate_limit_hits_total",
        "counter",
        "Rate-limit threshold hits by kind.",
        lims.iter()
            .flat_map(|l| {
                [
                    (
                        label(&[("sender", &l.sender), ("kind", "soft")]),
                        l.soft_hits.to_string(),
                    ),
                    (
                        label(&[("sender", &l.sender), ("kind", "hard")]),
                        l.hard_hits.to_string(),
                    ),
                ]
            })
            .collect(),
    );
    let (counts, n, sum) = ctx
        .store()?
        .read(|c| reports::delivery_histogram(c, &LATENCY_BOUNDS_MS))?;
    let mut hist: Vec<(String, String)> = LATENCY_BOUNDS_MS
        .iter()
        .zip(&counts)
        .map(|(b, c)| {
            (
                label(&[("le", &format!("{}", *b as f64 / 1000.0))]),
                c.to_string(),
            )
        })
        .collect();
    hist.push((label(&[("le", "+Inf")]), n.to_string()));
    t.push_str("# HELP relay_delivery_latency_seconds Time from send to claim.\n# TYPE relay_delivery_latency_seconds histogram\n");
    for (l, v) in hist {
        t.push_str(&format!("relay_delivery_latency_seconds_bucket{l} {v}\n"));
    }
    t.push_str(&format!(
        "relay_delivery_latency_seconds_sum {}\nrelay_delivery_latency_seconds_count {n}\n",
        sum as f64 / 1000.0
    ));
    Ok(t)
}
