//! relay's index seen as DorkOS's `relay_index` and `relay_traces`: the
//! rows, pages, spans and aggregates behind the DorkOS routes.
//!
//! relay keeps one row per (endpoint, message); DorkOS keeps those too,
//! plus one publish row per message under the endpoint hash `*` (status
//! `delivered`, carrying the sender, which per-endpoint rows leave null).
//! The `*` rows are derived here from the others. Statuses map as DorkOS
//! sees files: `pending` and `claimed` are `pending` (DorkOS keeps a claimed
//! message pending), `acked` is `delivered`, `failed` is `failed`.
//! DorkOS's one trace span per publish is derived from a message's rows.

use std::collections::{BTreeMap, HashMap};

use rusqlite::{Connection, OptionalExtension, params_from_iter, types::Value as Sql};
use serde_json::{Value, json};

use crate::clock::iso8601;
use crate::vocab::{Code, DorkStatus, Rejection, Status, TraceStatus};

/// The `*` (publish) row's endpoint hash.
pub const STAR: &str = "*";

/// One IndexedMessage.
#[derive(Debug, Clone)]
pub struct Indexed {
    pub id: String,
    pub subject: String,
    pub endpoint: String,
    pub status: DorkStatus,
    pub created_at: u64,
    pub expires_at: Option<u64>,
    pub sender: Option<String>,
}

impl Indexed {
    /// The JSON object, DorkOS's keys in DorkOS's order.
    #[must_use]
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "subject": self.subject,
            "endpointHash": self.endpoint,
            "status": self.status,
            "createdAt": iso8601(self.created_at),
            "expiresAt": self.expires_at.map(iso8601),
            "sender": self.sender,
        })
    }

    /// `"<id> <endpointHash>"`, the page cursor after this row.
    #[must_use]
    pub fn cursor(&self) -> String {
        format!("{} {}", self.id, self.endpoint)
    }

    fn star(row: &Raw) -> Self {
        Indexed {
            id: row.id.clone(),
            subject: row.subject.clone(),
            endpoint: STAR.into(),
            status: DorkStatus::Delivered,
            created_at: row.sent_at,
            expires_at: row.expires_at,
            sender: Some(row.sender.clone()),
        }
    }

    fn copy(row: &Raw) -> Self {
        Indexed {
            id: row.id.clone(),
            subject: row.subject.clone(),
            endpoint: row.endpoint.clone(),
            status: row.status.dorkos(),
            created_at: row.sent_at,
            expires_at: row.expires_at,
            sender: None,
        }
    }
}

/// One of relay's rows.
#[derive(Debug, Clone)]
pub struct Raw {
    pub id: String,
    pub endpoint: String,
    pub subject: String,
    pub sender: String,
    pub trace_id: String,
    pub status: Status,
    pub sent_at: u64,
    pub claimed_at: Option<u64>,
    pub done_at: Option<u64>,
    pub expires_at: Option<u64>,
    pub code: Option<String>,
    pub reason: Option<String>,
}

impl Raw {
    /// Its dead-letter code, if it has one relay knows.
    fn code(&self) -> Option<Code> {
        self.code.as_deref()?.parse().ok()
    }
}

const COLUMNS: &str = "id, endpoint, subject, sender, trace_id, status, sent_at, claimed_at, done_at, expires_at, code, reason";

fn raw(r: &rusqlite::Row<'_>) -> rusqlite::Result<Raw> {
    Ok(Raw {
        id: r.get(0)?,
        endpoint: r.get(1)?,
        subject: r.get(2)?,
        sender: r.get(3)?,
        trace_id: r.get(4)?,
        status: r.get(5)?,
        sent_at: r.get(6)?,
        claimed_at: r.get(7)?,
        done_at: r.get(8)?,
        expires_at: r.get(9)?,
        code: r.get(10)?,
        reason: r.get(11)?,
    })
}

/// A cursor `"<id> <endpointHash>"` (one without a space is `(id, "")`).
#[must_use]
pub fn parse_cursor(c: &str) -> (String, String) {
    match c.split_once(' ') {
        Some((id, ep)) => (id.to_string(), ep.to_string()),
        None => (c.to_string(), String::new()),
    }
}

/// `GET /messages`' filters.
#[derive(Debug, Default)]
pub struct ListFilter {
    pub subject: Option<String>,
    /// relay statuses to keep (`None`: all, `*` rows included).
    pub statuses: Option<Vec<Status>>,
    pub from: Option<String>,
    pub cursor: Option<(String, String)>,
    pub limit: usize,
}

/// A page of IndexedMessages newest first (`id` then `endpointHash`
/// descending, so a message's `*` row comes after its copies), and whether
/// more follow.
pub fn list(c: &Connection, f: &ListFilter) -> rusqlite::Result<(Vec<Indexed>, bool)> {
    let copies = f.from.is_none();
    let stars = f.statuses.is_none();
    let mut sql = format!("SELECT {COLUMNS} FROM messages WHERE 1");
    let mut args: Vec<Sql> = Vec::new();
    let mut pending_star: Option<Raw> = None;
    if let Some((id, ep)) = &f.cursor {
        if ep == STAR || ep.is_empty() {
            sql.push_str(" AND id < ?");
            args.push(Sql::Text(id.clone()));
        } else {
            sql.push_str(" AND (id < ? OR (id = ? AND endpoint < ?))");
            args.extend([
                Sql::Text(id.clone()),
                Sql::Text(id.clone()),
                Sql::Text(ep.clone()),
            ]);
            // That message's `*` row is still to come.
            if stars {
                pending_star = first_row(c, id)?.filter(|r| keep_star(f, r));
            }
        }
    }
    if let Some(s) = &f.subject {
        sql.push_str(" AND subject = ?");
        args.push(Sql::Text(s.clone()));
    }
    if let Some(from) = &f.from {
        sql.push_str(" AND sender = ?");
        args.push(Sql::Text(from.clone()));
    }
    if let Some(st) = &f.statuses {
        sql.push_str(&format!(
            " AND status IN ({})",
            vec!["?"; st.len()].join(",")
        ));
        args.extend(st.iter().map(|s| Sql::Text(s.to_string())));
    }
    sql.push_str(" ORDER BY id DESC, endpoint DESC");
    let mut stmt = c.prepare_cached(&sql)?;
    let mut rows = stmt.query(params_from_iter(args))?;
    let mut out = Vec::new();
    let want = f.limit + 1;
    while out.len() < want {
        let Some(r) = rows.next()? else { break };
        let r = raw(r)?;
        if let Some(star) = pending_star.take_if(|s| s.id != r.id) {
            out.push(Indexed::star(&star));
            if out.len() >= want {
                break;
            }
        }
        if pending_star.is_none() && stars && keep_star(f, &r) {
            pending_star = Some(r.clone());
        }
        if copies {
            out.push(Indexed::copy(&r));
        }
    }
    if out.len() < want
        && let Some(star) = pending_star
    {
        out.push(Indexed::star(&star));
    }
    let more = out.len() > f.limit;
    out.truncate(f.limit);
    Ok((out, more))
}

fn keep_star(f: &ListFilter, r: &Raw) -> bool {
    f.subject.as_ref().is_none_or(|s| *s == r.subject)
        && f.from.as_ref().is_none_or(|s| *s == r.sender)
}

fn first_row(c: &Connection, id: &str) -> rusqlite::Result<Option<Raw>> {
    c.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM messages WHERE id = ?1 LIMIT 1"
    ))?
    .query_row([id], raw)
    .optional()
}

/// Every row of message `id`, by endpoint.
pub fn rows_of(c: &Connection, id: &str) -> rusqlite::Result<Vec<Raw>> {
    c.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM messages WHERE id = ?1 ORDER BY endpoint"
    ))?
    .query_map([id], raw)?
    .collect()
}

/// MessageDetail: the representative row (the first copy, else the `*`
/// row) plus `deliveries`, every row by endpoint hash; `None` if unknown.
pub fn detail(c: &Connection, id: &str) -> rusqlite::Result<Option<Value>> {
    let rows = rows_of(c, id)?;
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    let mut all = vec![Indexed::star(first)];
    all.extend(rows.iter().map(Indexed::copy));
    let rep = all.get(1).unwrap_or(&all[0]).to_json();
    let mut v = rep;
    v["deliveries"] = Value::Array(all.iter().map(Indexed::to_json).collect());
    Ok(Some(v))
}

/// A page of endpoint `ep`'s rows oldest first, with `statuses` (relay's;
/// `None`: all) after `cursor`; and whether more follow.
pub fn inbox(
    c: &Connection,
    ep: &str,
    statuses: Option<&[Status]>,
    cursor: Option<&(String, String)>,
    limit: usize,
) -> rusqlite::Result<(Vec<Raw>, bool)> {
    let mut sql = format!("SELECT {COLUMNS} FROM messages WHERE endpoint = ?");
    let mut args = vec![Sql::Text(ep.to_string())];
    if let Some((id, cep)) = cursor {
        // Rows strictly above (id, endpoint): one endpoint, so by id.
        if cep.as_str() < ep {
            sql.push_str(" AND id >= ?");
        } else {
            sql.push_str(" AND id > ?");
        }
        args.push(Sql::Text(id.clone()));
    }
    if let Some(st) = statuses {
        sql.push_str(&format!(
            " AND status IN ({})",
            vec!["?"; st.len()].join(",")
        ));
        args.extend(st.iter().map(|s| Sql::Text(s.to_string())));
    }
    sql.push_str(" ORDER BY id LIMIT ?");
    args.push(Sql::Integer(i64::try_from(limit + 1).unwrap_or(i64::MAX)));
    let mut rows: Vec<Raw> = c
        .prepare_cached(&sql)?
        .query_map(params_from_iter(args), raw)?
        .collect::<rusqlite::Result<_>>()?;
    let more = rows.len() > limit;
    rows.truncate(limit);
    Ok((rows, more))
}

/// RelayMetrics: every row (the derived `*` rows included) by status and
/// by subject (count descending).
pub fn relay_metrics(c: &Connection) -> rusqlite::Result<Value> {
    let mut by_status: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut total = 0u64;
    let mut stmt = c.prepare_cached("SELECT status, COUNT(*) FROM messages GROUP BY status")?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let n = u64::try_from(r.get::<_, i64>(1)?).unwrap_or(0);
        let status: Status = r.get(0)?;
        *by_status.entry(status.dorkos().as_str()).or_default() += n;
        total += n;
    }
    let messages: i64 = c.query_row("SELECT COUNT(DISTINCT id) FROM messages", [], |r| r.get(0))?;
    let messages = u64::try_from(messages).unwrap_or(0);
    if messages > 0 {
        *by_status.entry(DorkStatus::Delivered.as_str()).or_default() += messages;
    }
    total += messages;
    let mut subjects: Vec<(String, u64)> = c
        .prepare_cached(
            "SELECT subject, COUNT(*) + COUNT(DISTINCT id) FROM messages GROUP BY subject",
        )?
        .query_map([], |r| {
            Ok((r.get(0)?, u64::try_from(r.get::<_, i64>(1)?).unwrap_or(0)))
        })?
        .collect::<rusqlite::Result<_>>()?;
    subjects.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    Ok(json!({
        "totalMessages": total,
        "byStatus": by_status,
        "bySubject": subjects.iter().map(|(s, n)| json!({ "subject": s, "count": n })).collect::<Vec<_>>(),
    }))
}

/// DorkOS's one span of a publish, from the message's rows.
#[derive(Debug)]
pub struct Span {
    pub message_id: String,
    pub trace_id: String,
    pub subject: String,
    /// `delivered`, `failed` or `no_subscriber`.
    pub status: TraceStatus,
    pub sent_at: u64,
    /// When the first copy was claimed (None if none was yet).
    pub claimed_at: Option<u64>,
    /// When every copy finished (acked or dead-lettered), the last one.
    pub done_at: Option<u64>,
    pub delivered_to: usize,
    pub rejected: usize,
    pub error: Option<String>,
    pub budget_code: Option<Code>,
    /// relay's per-endpoint spans.
    pub copies: Vec<Raw>,
}

/// Whether relay row `r` is a copy refused at send time (a TTL already
/// past at the send is dead-lettered in the same instant, unclaimed; one
/// that expired later, waiting, was delivered).
fn refused_at_send(r: &Raw) -> bool {
    let at_send = r.claimed_at.is_none() && r.done_at == Some(r.sent_at);
    r.status == Status::Failed
        && r.code()
            .is_some_and(|c| c.is_at_send() || (c == Code::TtlExpired && at_send))
}

impl Span {
    /// The span of one message's rows (all of one id).
    fn of(rows: Vec<Raw>) -> Option<Span> {
        let first = rows.first()?.clone();
        let delivered_to = rows.iter().filter(|r| !refused_at_send(r)).count();
        let no_match = rows
            .iter()
            .filter(|r| r.code() == Some(Code::NoMatch))
            .count();
        let rejected = rows.len() - delivered_to - no_match;
        let status = if delivered_to > 0 {
            TraceStatus::Delivered
        } else if rejected > 0 {
            TraceStatus::Failed
        } else {
            TraceStatus::NoSubscriber
        };
        let refusal = rows
            .iter()
            .find(|r| refused_at_send(r) && r.code() != Some(Code::NoMatch));
        let finished = rows.iter().all(|r| r.status.is_settled());
        Some(Span {
            message_id: first.id.clone(),
            trace_id: first.trace_id.clone(),
            subject: first.subject.clone(),
            status,
            sent_at: rows
                .iter()
                .map(|r| r.sent_at)
                .min()
                .unwrap_or(first.sent_at),
            claimed_at: rows.iter().filter_map(|r| r.claimed_at).min(),
            done_at: if finished {
                rows.iter().filter_map(|r| r.done_at).max()
            } else {
                None
            },
            delivered_to,
            rejected,
            error: (status != TraceStatus::Delivered)
                .then(|| refusal.and_then(|r| r.reason.clone()))
                .flatten(),
            budget_code: refusal.and_then(Raw::code).filter(|c| c.is_budget()),
            copies: rows,
        })
    }

    /// The TraceSpan JSON (`metadata` a JSON string, as DorkOS stores it),
    /// with relay's per-endpoint spans as `copies`.
    #[must_use]
    pub fn to_json(&self) -> Value {
        let mut meta = json!({
            "deliveredTo": self.delivered_to,
            "rejectedCount": self.rejected,
            "hasAdapterResult": false,
            "durationMs": 0,
        });
        if let Some(c) = &self.budget_code {
            meta["rejectionCode"] = json!(Rejection::BudgetExceeded);
            meta["budgetCode"] = json!(c);
        }
        let delivered = self.status == TraceStatus::Delivered;
        json!({
            "id": self.message_id,
            "messageId": self.message_id,
            "traceId": self.trace_id,
            "subject": self.subject,
            "status": self.status,
            "kind": "delivery",
            "sentAt": iso8601(self.sent_at),
            "deliveredAt": delivered.then(|| iso8601(self.claimed_at.unwrap_or(self.sent_at))),
            "processedAt": self.done_at.map(iso8601),
            "errorMessage": self.error,
            "metadata": meta.to_string(),
            "copies": self.copies.iter().map(copy_json).collect::<Vec<_>>(),
        })
    }
}

/// relay's own span of one copy.
fn copy_json(r: &Raw) -> Value {
    json!({
        "endpoint": r.endpoint,
        "from": r.sender,
        "state": r.status,
        "sentAt": iso8601(r.sent_at),
        "claimedAt": r.claimed_at.map(iso8601),
        "doneAt": r.done_at.map(iso8601),
        "code": r.code,
        "reason": r.reason,
    })
}

/// The trace of message `id`: its trace id and one span per message in it
/// (by send time); `None` if the index has no such message.
pub fn trace(c: &Connection, id: &str) -> rusqlite::Result<Option<(String, Vec<Span>)>> {
    let Some(trace_id) = c
        .query_row(
            "SELECT trace_id FROM messages WHERE id = ?1 LIMIT 1",
            [id],
            |r| r.get::<_, String>(0),
        )
        .optional()?
    else {
        return Ok(None);
    };
    let rows: Vec<Raw> = c
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM messages WHERE trace_id = ?1 ORDER BY sent_at, id, endpoint"
        ))?
        .query_map([&trace_id], raw)?
        .collect::<rusqlite::Result<_>>()?;
    Ok(Some((trace_id, spans_of(rows))))
}

/// Rows (grouped by id, in first-seen order) as spans.
fn spans_of(rows: Vec<Raw>) -> Vec<Span> {
    let mut order: Vec<String> = Vec::new();
    let mut by: HashMap<String, Vec<Raw>> = HashMap::new();
    for r in rows {
        if !by.contains_key(&r.id) {
            order.push(r.id.clone());
        }
        by.entry(r.id.clone()).or_default().push(r);
    }
    order
        .into_iter()
        .filter_map(|id| by.remove(&id).and_then(Span::of))
        .collect()
}

/// DeliveryMetrics over the spans sent at or after `since` (ms): DorkOS's
/// fields, latencies from send to the first claim.
pub fn delivery_metrics(c: &Connection, since: u64) -> rusqlite::Result<Value> {
    let rows: Vec<Raw> = c
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM messages WHERE sent_at >= ?1 ORDER BY id"
        ))?
        .query_map([since], raw)?
        .collect::<rusqlite::Result<_>>()?;
    let dead = rows.iter().filter(|r| r.status == Status::Failed).count();
    let spans = spans_of(rows);
    let count = |s: TraceStatus| spans.iter().filter(|x| x.status == s).count();
    let code = |c: Code| spans.iter().filter(|x| x.budget_code == Some(c)).count();
    let mut lat: Vec<u64> = spans
        .iter()
        .filter(|s| s.status == TraceStatus::Delivered)
        .filter_map(|s| Some(s.claimed_at?.saturating_sub(s.sent_at)))
        .collect();
    lat.sort_unstable();
    let pct = |p: f64| -> Option<f64> {
        // percentile_cont: linear interpolation between closest ranks.
        if lat.is_empty() {
            return None;
        }
        #[allow(clippy::cast_precision_loss)]
        let pos = p * (lat.len() - 1) as f64;
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
        #[allow(clippy::cast_precision_loss)]
        let (a, b) = (lat[lo] as f64, lat[hi] as f64);
        Some(a + (b - a) * (pos - pos.floor()))
    };
    #[allow(clippy::cast_precision_loss)]
    let avg = (!lat.is_empty()).then(|| lat.iter().sum::<u64>() as f64 / lat.len() as f64);
    let subjects: std::collections::HashSet<&str> =
        spans.iter().map(|s| s.subject.as_str()).collect();
    Ok(json!({
        "totalMessages": spans.len(),
        "deliveredCount": count(TraceStatus::Delivered),
        "failedCount": count(TraceStatus::Failed),
        "noSubscriberCount": count(TraceStatus::NoSubscriber),
        "deadLetteredCount": dead,
        "avgDeliveryLatencyMs": avg,
        "p50DeliveryLatencyMs": pct(0.5),
        "p95DeliveryLatencyMs": pct(0.95),
        "p99DeliveryLatencyMs": pct(0.99),
        "activeEndpoints": subjects.len(),
        "budgetRejections": {
            "hopLimit": code(Code::HopLimit),
            "ttlExpired": code(Code::TtlExpired),
            "cycleDetected": code(Code::CycleDetected),
            "budgetExhausted": code(Code::BudgetExhausted),
        },
    }))
}
