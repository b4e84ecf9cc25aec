//! Read-only queries behind `trace`, `metrics` and `events`: SQL aggregates
//! over the index and the event log.

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use crate::store::index::event_from_row;
use crate::store::rows::EventRow;
use crate::vocab::{Code, Status, TraceStatus};

/// One span: a message at one endpoint, with its three timestamps.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Span {
    /// `<messageId>@<endpoint>`.
    pub id: String,
    /// The message.
    pub message_id: String,
    /// Its trace.
    pub trace_id: String,
    /// The publish subject.
    pub subject: String,
    /// The mailbox.
    pub endpoint: String,
    /// Sender.
    pub from: String,
    /// DorkOS status: `sent`, `delivered` (processed), `failed`, `timeout` (rejected).
    pub status: TraceStatus,
    /// Our lifecycle state.
    pub state: Status,
    /// When it was sent (ISO-8601).
    pub sent_at: String,
    /// When a consumer claimed it.
    pub delivered_at: Option<String>,
    /// When it was acked or dead-lettered.
    pub processed_at: Option<String>,
    /// Why it failed.
    pub error_message: Option<String>,
    /// Machine-readable failure code.
    pub code: Option<String>,
}

/// DorkOS's trace status of a row: a dead letter the consumer caused
/// (`Code::is_consumer_failure`) `failed`, any other a rejection (`timeout`).
fn trace_status(state: Status, code: Option<&str>) -> TraceStatus {
    let consumer = || {
        code.and_then(|c| c.parse::<Code>().ok())
            .is_some_and(Code::is_consumer_failure)
    };
    match state {
        Status::Acked => TraceStatus::Delivered,
        Status::Failed if consumer() => TraceStatus::Failed,
        Status::Failed => TraceStatus::Timeout,
        Status::Pending | Status::Claimed => TraceStatus::Sent,
    }
}

/// The trace id of message `id` (or `id` itself if it names a trace).
pub fn trace_of(conn: &Connection, id: &str) -> rusqlite::Result<Option<String>> {
    conn.query_row(
        "SELECT trace_id FROM messages WHERE id = ?1
         UNION ALL SELECT trace_id FROM messages WHERE trace_id = ?1 LIMIT 1",
        params![id],
        |r| r.get(0),
    )
    .optional()
}

/// Every span of a trace, by send time.
pub fn spans(conn: &Connection, trace_id: &str) -> rusqlite::Result<Vec<Span>> {
    let mut stmt = conn.prepare(
        "SELECT id, endpoint, subject, sender, trace_id, status, sent_at, claimed_at, done_at,
                code, reason
         FROM messages WHERE trace_id = ?1 ORDER BY sent_at, id, endpoint",
    )?;
    let iso = |v: Option<u64>| v.map(crate::clock::iso8601);
    stmt.query_map(params![trace_id], |r| {
        let id: String = r.get(0)?;
        let endpoint: String = r.get(1)?;
        let state: Status = r.get(5)?;
        let code: Option<String> = r.get(9)?;
        Ok(Span {
            id: format!("{id}@{endpoint}"),
            message_id: id,
            trace_id: r.get(4)?,
            subject: r.get(2)?,
            from: r.get(3)?,
            status: trace_status(state, code.as_deref()),
            sent_at: crate::clock::iso8601(r.get(6)?),
            delivered_at: iso(r.get(7)?),
            processed_at: iso(r.get(8)?),
            error_message: r.get(10)?,
            code,
            endpoint,
            state,
        })
    })?
    .collect()
}

/// Latency distribution (ms).
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Latency {
    /// How many samples.
    pub count: u64,
    /// Mean.
    pub avg: Option<f64>,
    /// Median (nearest rank).
    pub p50: Option<u64>,
    /// 95th percentile (nearest rank).
    pub p95: Option<u64>,
    /// 99th percentile (nearest rank).
    pub p99: Option<u64>,
}

/// Latency of `expr` over the rows of the window, overall (`None` key) and
/// per endpoint (only keys with samples): one scan, then nearest-rank
/// percentiles from sorted samples (in SQL, window functions took four
/// sorts of the whole window: 0.6 s for 100k rows).
pub fn latencies(
    conn: &Connection,
    expr: &str,
    since: u64,
) -> rusqlite::Result<std::collections::HashMap<Option<String>, Latency>> {
    let mut stmt = conn.prepare(&format!(
        "SELECT endpoint, MAX({expr}, 0) FROM messages
         WHERE {} >= ?1 AND ({expr}) IS NOT NULL",
        sent_at(since)
    ))?;
    let mut per: std::collections::HashMap<String, Vec<u64>> = std::collections::HashMap::new();
    let mut all = Vec::new();
    let mut rows = stmt.query(params![since])?;
    while let Some(r) = rows.next()? {
        let ep = r.get_ref(0)?.as_str()?;
        let v = u64::try_from(r.get::<_, i64>(1)?).unwrap_or(0);
        all.push(v);
        match per.get_mut(ep) {
            Some(vs) => vs.push(v),
            None => {
                per.insert(ep.to_owned(), vec![v]);
            }
        }
    }
    let mut out: std::collections::HashMap<Option<String>, Latency> = per
        .into_iter()
        .map(|(ep, mut vs)| (Some(ep), Latency::of(&mut vs)))
        .collect();
    if !all.is_empty() {
        out.insert(None, Latency::of(&mut all));
    }
    Ok(out)
}

impl Latency {
    /// Count, mean and nearest-rank percentiles of `samples` (sorted here).
    fn of(samples: &mut [u64]) -> Self {
        samples.sort_unstable();
        let n = samples.len();
        // Nearest rank: the ceil(p * n)-th smallest.
        let rank = |p: usize| samples.get((p * n).div_ceil(100).max(1) - 1).copied();
        Latency {
            count: n as u64,
            avg: (n > 0).then(|| samples.iter().map(|&v| v as f64).sum::<f64>() / n as f64),
            p50: rank(50),
            p95: rank(95),
            p99: rank(99),
        }
    }
}

/// The column to compare with a window's start: for all history (0) a scan
/// of the table, not of `messages_by_sent` with a primary-key lookup per
/// row, which is five times slower (`+` keeps SQLite off the index).
fn sent_at(since: u64) -> &'static str {
    if since == 0 { "+sent_at" } else { "sent_at" }
}

/// Delivery latency: sent -> claimed.
pub const DELIVERY: &str = "claimed_at - sent_at";
/// Processing latency: claimed -> acked.
pub const PROCESSING: &str = "CASE WHEN status = 'acked' THEN done_at - claimed_at END";

/// Counts of one endpoint (or of everything).
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Counts {
    /// Rows (message copies).
    pub total: u64,
    /// Still in `new/`.
    pub pending: u64,
    /// Claimed, not finished.
    pub in_flight: u64,
    /// Acked.
    pub delivered: u64,
    /// Dead-lettered because the consumer failed.
    pub failed: u64,
    /// Dead-lettered for any reason.
    pub dead_lettered: u64,
}

/// Per-endpoint counts in the window, by endpoint.
pub fn counts(conn: &Connection, since: u64) -> rusqlite::Result<Vec<(String, Counts)>> {
    let consumer_failures: Vec<&str> = Code::ALL
        .iter()
        .filter(|c| c.is_consumer_failure())
        .map(|c| c.as_str())
        .collect();
    let consumer_failures = format!("('{}')", consumer_failures.join("', '"));
    let mut stmt = conn.prepare(&format!(
        "SELECT endpoint, COUNT(*),
                SUM(status = 'pending'), SUM(status = 'claimed'), SUM(status = 'acked'),
                SUM(status = 'failed' AND code IN {consumer_failures}), SUM(status = 'failed')
         FROM messages WHERE {} >= ?1 GROUP BY endpoint ORDER BY endpoint",
        sent_at(since)
    ))?;
    stmt.query_map(params![since], |r| {
        Ok((
            r.get(0)?,
            Counts {
                total: r.get(1)?,
                pending: r.get(2)?,
                in_flight: r.get(3)?,
                delivered: r.get(4)?,
                failed: r.get(5)?,
                dead_lettered: r.get(6)?,
            },
        ))
    })?
    .collect()
}

/// Distinct messages sent in the window.
pub fn distinct_messages(conn: &Connection, since: u64) -> rusqlite::Result<u64> {
    conn.query_row(
        &format!(
            "SELECT COUNT(DISTINCT id) FROM messages WHERE {} >= ?1",
            sent_at(since)
        ),
        params![since],
        |r| r.get(0),
    )
}

/// Dead letters in the window by code. For all history, from the partial
/// index of failed rows (`messages_failed_by_code`) alone.
pub fn codes(conn: &Connection, since: u64) -> rusqlite::Result<Vec<(String, u64)>> {
    let window = if since == 0 { "" } else { "sent_at >= ?1 AND" };
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT code, COUNT(*) FROM messages
         WHERE {window} status = 'failed' AND code IS NOT NULL GROUP BY code"
    ))?;
    let row = |r: &rusqlite::Row<'_>| Ok((r.get(0)?, r.get(1)?));
    if since == 0 {
        stmt.query_map([], row)?.collect()
    } else {
        stmt.query_map(params![since], row)?.collect()
    }
}

/// Events in the window by kind.
pub fn event_kinds(conn: &Connection, since: u64) -> rusqlite::Result<Vec<(String, u64)>> {
    let mut stmt =
        conn.prepare("SELECT kind, COUNT(*) FROM events WHERE at >= ?1 GROUP BY kind")?;
    stmt.query_map(params![since], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect()
}

/// The most recent `limit` events, newest first.
pub fn recent_events(conn: &Connection, limit: u32) -> rusqlite::Result<Vec<EventRow>> {
    conn.prepare_cached(
        "SELECT id, at, kind, sender, endpoint, message_id, detail
         FROM events ORDER BY id DESC LIMIT ?1",
    )?
    .query_map(params![limit], event_from_row)?
    .collect()
}

/// Events of `kind`, ever (as far as the event log goes back), from
/// `events_by_kind`.
pub fn event_count(conn: &Connection, kind: &str) -> rusqlite::Result<u64> {
    conn.prepare_cached("SELECT COUNT(*) FROM events WHERE kind = ?1")?
        .query_row(params![kind], |r| r.get(0))
}

/// A message copy as the live stream announces it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageRow {
    /// Message id.
    pub id: String,
    /// Mailbox.
    pub endpoint: String,
    /// Publish subject.
    pub subject: String,
    /// Sender.
    pub from: String,
    /// Trace.
    pub trace_id: String,
    /// Lifecycle state now.
    pub state: String,
    /// Send time (ms).
    pub sent_at: u64,
}

/// Cumulative counts of delivery latencies at or under each bound (ms),
/// plus the total count and sum, for a Prometheus histogram.
pub fn delivery_histogram(
    conn: &Connection,
    bounds: &[u64],
) -> rusqlite::Result<(Vec<u64>, u64, u64)> {
    // One pass over the claimed rows, one cumulative count per bound.
    let buckets: String = (1..=bounds.len())
        .map(|i| format!(", COALESCE(SUM(d <= ?{i}), 0)"))
        .collect();
    let sql = format!(
        "SELECT COUNT(*), SUM(MAX(d, 0)){buckets}
         FROM (SELECT claimed_at - sent_at AS d FROM messages WHERE claimed_at IS NOT NULL)"
    );
    conn.query_row(&sql, rusqlite::params_from_iter(bounds), |r| {
        let sum: Option<i64> = r.get(1)?;
        let counts = (0..bounds.len())
            .map(|i| r.get(i + 2))
            .collect::<rusqlite::Result<Vec<u64>>>()?;
        Ok((
            counts,
            r.get(0)?,
            u64::try_from(sum.unwrap_or(0)).unwrap_or(0),
        ))
    })
}

/// The newest event id (0 if none).
pub fn last_event_id(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("SELECT COALESCE(MAX(id), 0) FROM events", [], |r| r.get(0))
}

/// Events after `after_id` (at or after `since`, of the given kinds if any),
/// oldest first, at most `limit`.
pub fn events_after(
    conn: &Connection,
    after_id: i64,
    since: u64,
    kinds: &[String],
    limit: u32,
) -> rusqlite::Result<Vec<EventRow>> {
    let kinds_json = serde_json::to_string(kinds).unwrap_or_else(|_| "[]".into());
    let mut stmt = conn.prepare_cached(
        "SELECT id, at, kind, sender, endpoint, message_id, detail FROM events
         WHERE id > ?1 AND at >= ?2
           AND (json_array_length(?3) = 0 OR kind IN (SELECT value FROM json_each(?3)))
         ORDER BY id LIMIT ?4",
    )?;
    stmt.query_map(params![after_id, since, kinds_json, limit], event_from_row)?
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_histogram_counts_each_bound_cumulatively() {
        let conn = Connection::open_in_memory().expect("memory db");
        conn.execute_batch(
            "CREATE TABLE messages (sent_at INTEGER, claimed_at INTEGER);
             INSERT INTO messages VALUES (0, 5), (10, 60), (0, 500), (0, NULL), (9, 1009);",
        )
        .expect("rows");
        let (counts, n, sum) = delivery_histogram(&conn, &[10, 100, 1000]).expect("histogram");
        assert_eq!(counts, [1, 2, 4]);
        assert_eq!((n, sum), (4, 5 + 50 + 500 + 1000));
        let (counts, n, sum) = delivery_histogram(&conn, &[]).expect("no bounds");
        assert_eq!((counts.len(), n, sum), (0, 4, 1555));
    }

    #[test]
    fn latencies_are_nearest_rank_overall_and_per_endpoint() {
        let conn = Connection::open_in_memory().expect("memory db");
        conn.execute_batch(
            "CREATE TABLE messages (endpoint TEXT, sent_at INTEGER, claimed_at INTEGER);
             INSERT INTO messages VALUES ('b', 100, 90), ('b', 0, NULL), ('a', 5, 4);",
        )
        .expect("rows");
        let mut values = String::new();
        for i in 1..=100 {
            values.push_str(&format!("('a', 0, {i}),"));
        }
        values.pop();
        conn.execute_batch(&format!("INSERT INTO messages VALUES {values}"))
            .expect("rows");
        let got = latencies(&conn, DELIVERY, 0).expect("latencies");
        let a = &got[&Some("a".to_owned())];
        // 0 (clamped from -1), then 1..=100: 101 samples.
        assert_eq!(
            (a.count, a.p50, a.p95, a.p99),
            (101, Some(50), Some(95), Some(99))
        );
        assert_eq!(a.avg, Some(5050.0 / 101.0));
        let b = &got[&Some("b".to_owned())];
        assert_eq!(
            (b.count, b.p50, b.p99),
            (1, Some(0), Some(0)),
            "clamped at 0"
        );
        assert_eq!(got[&None].count, 102);
        assert!(latencies(&conn, DELIVERY, 1_000).expect("empty").is_empty());
    }
}
