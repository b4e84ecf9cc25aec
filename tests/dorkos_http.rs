//! `relay serve` as a DorkOS peer (issue 13): contract tests written from
//! `dorkos-http.md` §1–5, route by route: exact field names and types,
//! statuses and error bodies, checked against the Zod schemas DorkOS
//! validates with (transcribed below); the SSE stream parsed as a client
//! parses it; the security frame (Host, Origin, token, limits, idle
//! streams); and relay's own routes beside DorkOS's.

mod extensions; // relay's routes: status, breakers/limits reset and open, ack/nack, redeliveries
mod routes; // every DorkOS core route: publish, messages, endpoints, inbox, dead letters, metrics, traces
mod security; // bad Host, bad Origin, missing token, oversize and slow bodies, 200 idle streams
mod stream; // GET /stream: DorkOS's events and data, id: lines, Last-Event-ID resumption

use serde_json::Value;

use crate::harness::{Relay, T};
use crate::surfaces::{Resp, Server, send_json};

/// `relay serve` on loopback with the clock pinned at `T`.
pub fn serve(r: &Relay) -> Server {
    serve_with(r, &[], &[])
}

/// `serve` with extra arguments and environment.
pub fn serve_with(r: &Relay, args: &[&str], env: &[(&str, &str)]) -> Server {
    let t = T.to_string();
    let mut all = vec![("RELAY_FAKE_NOW_MS", t.as_str())];
    all.extend_from_slice(env);
    Server::start(r, "127.0.0.1:0", args, &all)
}

/// `POST path` with `body` as JSON.
#[track_caller]
pub fn post(s: &Server, path: &str, body: &Value) -> Resp {
    send_json(s.addr, "POST", path, body)
}

/// `POST /api/relay/messages`, asserting 200; the PublishResult.
#[track_caller]
pub fn publish(s: &Server, body: &Value) -> Value {
    let resp = post(s, "/api/relay/messages", body);
    assert_eq!(resp.status, 200, "{body} -> {resp:?}");
    let v = resp.json();
    assert_publish_result(&v);
    v
}

/// `Date.toISOString()`: `YYYY-MM-DDTHH:MM:SS.mmmZ`.
#[track_caller]
pub fn assert_iso(v: &Value) {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("not an ISO string: {v}"));
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| r.into_iter().all(|i| b[i].is_ascii_digit());
    assert!(
        b.len() == 24
            && digits(0..4)
            && b[4] == b'-'
            && digits(5..7)
            && b[7] == b'-'
            && digits(8..10)
            && b[10] == b'T'
            && digits(11..13)
            && b[13] == b':'
            && digits(14..16)
            && b[16] == b':'
            && digits(17..19)
            && b[19] == b'.'
            && digits(20..23)
            && b[23] == b'Z',
        "not Date.toISOString() form: {s:?}"
    );
}

/// `v[key]` is a string (`nullable`: or null).
#[track_caller]
fn string_field(v: &Value, key: &str, nullable: bool) {
    let f = &v[key];
    assert!(
        f.is_string() || (nullable && f.is_null() && v.get(key).is_some()),
        "{key} must be a string{}: {v}",
        if nullable { " or null" } else { "" }
    );
}

/// An integer ≥ 0.
#[track_caller]
fn count_field(v: &Value, key: &str) {
    assert!(v[key].is_u64(), "{key} must be an integer >= 0: {v}");
}

/// PublishResult (§2.1).
#[track_caller]
pub fn assert_publish_result(v: &Value) {
    string_field(v, "messageId", false);
    count_field(v, "deliveredTo");
    if let Some(rej) = v.get("rejected") {
        let rej = rej.as_array().unwrap_or_else(|| panic!("rejected: {v}"));
        assert!(!rej.is_empty(), "rejected only when non-empty: {v}");
        for r in rej {
            string_field(r, "endpointHash", false);
            string_field(r, "reason", false);
        }
    }
    if let Some(p) = v.get("mailboxPressure") {
        let p = p
            .as_object()
            .unwrap_or_else(|| panic!("mailboxPressure: {v}"));
        assert!(!p.is_empty(), "mailboxPressure only when checked: {v}");
        for x in p.values() {
            let x = x.as_f64().unwrap_or(-1.0);
            assert!((0.0..=1.0).contains(&x), "pressure in 0..1: {v}");
        }
    }
}

/// IndexedMessage (§2.3).
#[track_caller]
pub fn assert_indexed(v: &Value) {
    for k in ["id", "subject", "endpointHash"] {
        string_field(v, k, false);
    }
    assert!(
        ["pending", "delivered", "failed"].contains(&v["status"].as_str().unwrap_or("")),
        "status: {v}"
    );
    assert_iso(&v["createdAt"]);
    if !v["expiresAt"].is_null() {
        assert_iso(&v["expiresAt"]);
    }
    string_field(v, "expiresAt", true);
    string_field(v, "sender", true);
}

/// RelayEnvelopeSchema (dorkos-contract.md §3): id, subject, from,
/// createdAt (ISO), budget with its five fields.
#[track_caller]
pub fn assert_envelope(v: &Value) {
    for k in ["id", "subject", "from"] {
        string_field(v, k, false);
    }
    assert_iso(&v["createdAt"]);
    let b = &v["budget"];
    for k in ["hopCount", "maxHops", "ttl", "callBudgetRemaining"] {
        assert!(b[k].is_u64(), "budget.{k}: {v}");
    }
    assert!(b["ancestorChain"].is_array(), "budget.ancestorChain: {v}");
}

/// TraceSpanSchema (§5.1).
#[track_caller]
pub fn assert_span(v: &Value) {
    for k in ["id", "messageId", "traceId", "subject", "sentAt"] {
        string_field(v, k, false);
    }
    assert_iso(&v["sentAt"]);
    assert!(
        ["sent", "delivered", "failed", "timeout", "no_subscriber"]
            .contains(&v["status"].as_str().unwrap_or("")),
        "status: {v}"
    );
    assert!(
        ["delivery", "lifecycle"].contains(&v["kind"].as_str().unwrap_or("")),
        "kind: {v}"
    );
    for k in ["deliveredAt", "processedAt", "errorMessage", "metadata"] {
        string_field(v, k, true);
    }
    if let Some(m) = v["metadata"].as_str() {
        let meta: Value =
            serde_json::from_str(m).unwrap_or_else(|e| panic!("metadata is not JSON ({e}): {v}"));
        count_field(&meta, "deliveredTo");
        count_field(&meta, "rejectedCount");
        assert!(meta["hasAdapterResult"].is_boolean(), "{meta}");
        assert!(meta["durationMs"].is_number(), "{meta}");
    }
}

/// DeliveryMetricsSchema (§5.2).
#[track_caller]
pub fn assert_delivery_metrics(v: &Value) {
    for k in [
        "totalMessages",
        "deliveredCount",
        "failedCount",
        "noSubscriberCount",
        "deadLetteredCount",
        "activeEndpoints",
    ] {
        count_field(v, k);
    }
    for k in [
        "avgDeliveryLatencyMs",
        "p50DeliveryLatencyMs",
        "p95DeliveryLatencyMs",
        "p99DeliveryLatencyMs",
    ] {
        assert!(
            v.get(k).is_some_and(|x| x.is_number() || x.is_null()),
            "{k}: number or null: {v}"
        );
    }
    let b = &v["budgetRejections"];
    for k in ["hopLimit", "ttlExpired", "cycleDetected", "budgetExhausted"] {
        count_field(b, k);
    }
}

/// DeadLetterEntry (§2.6).
#[track_caller]
pub fn assert_dead_letter(v: &Value) {
    for k in ["messageId", "endpointHash", "reason"] {
        string_field(v, k, false);
    }
    assert_iso(&v["failedAt"]);
    assert!(v.get("envelope").is_some(), "envelope (or null): {v}");
    if !v["envelope"].is_null() {
        assert_envelope(&v["envelope"]);
    }
}

/// The validation body (§1) with exactly `fields` in `fieldErrors`.
#[track_caller]
pub fn assert_validation(resp: &Resp, fields: &[&str], form: bool) {
    assert_eq!(resp.status, 400, "{resp:?}");
    let v = resp.json();
    assert_eq!(v["error"], "Validation failed", "{v}");
    let d = &v["details"];
    let f = d["formErrors"]
        .as_array()
        .unwrap_or_else(|| panic!("formErrors: {v}"));
    assert_eq!(!f.is_empty(), form, "formErrors: {v}");
    assert!(f.iter().all(Value::is_string), "{v}");
    let fe = d["fieldErrors"]
        .as_object()
        .unwrap_or_else(|| panic!("fieldErrors: {v}"));
    let mut got: Vec<&str> = fe.keys().map(String::as_str).collect();
    got.sort_unstable();
    let mut want = fields.to_vec();
    want.sort_unstable();
    assert_eq!(got, want, "{v}");
    for msgs in fe.values() {
        let msgs = msgs.as_array().unwrap_or_else(|| panic!("{v}"));
        assert!(!msgs.is_empty() && msgs.iter().all(Value::is_string), "{v}");
    }
}
