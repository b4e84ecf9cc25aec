//! Observability and policy (issue 4): traces, metrics, dead letters, budgets,
//! access rules, failure notices, idempotency, gc and the event log.
//!
//! Time is pinned with `RELAY_FAKE_NOW_MS` (see [`T0`]); nothing sleeps to
//! wait for the clock.

mod access; // access-rules.json: allow, deny, priority and file order, fail closed
mod budgets; // hop_limit, cycle_detected, ttl_expired, budget_exhausted at send
mod dlq; // dlq list/show/requeue/purge
mod events; // events --kind/--since, --follow streaming and ending
mod gc; // TTL expiry, stale tmp/ files, dry run, retention pruning
mod idempotency; // --idempotency-key: duplicates, window, senders, refusals
mod metrics; // counts and nearest-rank percentiles from known latencies
mod notices; // failure notices to replyTo, never about a notice
mod trace; // spans across fan-out, handler re-sends and RELAY_TRACE_ID

use std::path::PathBuf;

use serde_json::{Value, json};

use crate::harness::Relay;

/// A fixed instant (2027-01-15T08:00:00Z) most tests pin relay's clock to.
pub const T0: u64 = 1_800_000_000_000;
/// One minute in ms.
pub const MIN: u64 = 60_000;
/// One hour in ms.
pub const HOUR: u64 = 3_600_000;
/// One day in ms.
pub const DAY: u64 = 86_400_000;

/// `relay send ARGS...` at `at`, asserting success; returns the printed id.
#[track_caller]
pub fn send_at(r: &Relay, at: u64, args: &[&str]) -> String {
    r.cmd(["send"]).args(args).at(at).success().id()
}

/// `relay ARGS... --json` at `at`, asserting success; its stdout as JSON.
#[track_caller]
pub fn json_at(r: &Relay, at: u64, args: &[&str]) -> Value {
    r.cmd(args).args(["--json"]).at(at).success().json()
}

/// `relay recv EP --json` at `at`: the claimed envelope.
#[track_caller]
pub fn recv_at(r: &Relay, at: u64, ep: &str) -> Value {
    json_at(r, at, &["recv", ep])
}

/// Message ids (file stems) in `mailboxes/<ep>/<sub>/`, sidecars excluded.
pub fn ids(r: &Relay, ep: &str, sub: &str) -> Vec<String> {
    r.files(ep, sub)
        .into_iter()
        .filter(|f| !f.ends_with(".reason.json"))
        .filter_map(|f| f.strip_suffix(".json").map(str::to_string))
        .collect()
}

/// The reason sidecar of dead letter `id` in endpoint (or directory) `ep`.
#[track_caller]
pub fn sidecar(r: &Relay, ep: &str, id: &str) -> Value {
    r.read_json(&format!("mailboxes/{ep}/failed/{id}.reason.json"))
}

/// The envelope file `mailboxes/<ep>/<sub>/<id>.json`.
#[track_caller]
pub fn envelope(r: &Relay, ep: &str, sub: &str, id: &str) -> Value {
    r.read_json(&format!("mailboxes/{ep}/{sub}/{id}.json"))
}

/// Writes an envelope with `budget` to `<scratch>/<name>` for `--parent`.
pub fn parent_file(r: &Relay, name: &str, trace_id: &str, budget: &Value) -> PathBuf {
    let env = json!({
        "id": "01MCC5RM00PARENT0000000000",
        "subject": "upstream",
        "from": "agent.up",
        "budget": budget,
        "createdAt": "2027-01-15T08:00:00.000Z",
        "payload": {"n": 1},
        "traceId": trace_id,
    });
    let path = r.scratch().join(name);
    std::fs::write(&path, serde_json::to_vec(&env).unwrap_or_default())
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    path
}

/// A budget object.
pub fn budget(hops: u64, max: u64, chain: &[&str], ttl: u64, calls: u64) -> Value {
    json!({
        "hopCount": hops,
        "maxHops": max,
        "ancestorChain": chain,
        "ttl": ttl,
        "callBudgetRemaining": calls,
    })
}

/// The one span of `trace` (`relay trace --json`) at endpoint `ep`.
#[track_caller]
pub fn span<'v>(trace: &'v Value, ep: &str) -> &'v Value {
    let spans = trace["spans"]
        .as_array()
        .unwrap_or_else(|| panic!("no spans array in {trace}"));
    let mut at: Vec<&Value> = spans.iter().filter(|s| s["endpoint"] == ep).collect();
    assert_eq!(at.len(), 1, "want exactly one span at {ep} in {trace}");
    at.remove(0)
}
