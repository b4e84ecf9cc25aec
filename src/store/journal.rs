//! The index journal: what a send would write into the index (its rows and
//! events), appended to `journal` instead, so a send never opens SQLite;
//! and likewise what a consumer's claims and acks would write (`consumer`).
//!
//! What is to be recorded is first gathered in an `Outbox` (rows and
//! events, in order); its caller either appends it here or writes it into
//! an index transaction (`Tx::record`), with the same statements either way.
//!
//! Every process that opens the index first moves the journal into it
//! (`Store::ingest`), so reports, claims and acks always see every send
//! that finished. Appends hold a shared `flock` on the journal for the one
//! `write`. Ingestion reads whole lines from the offset the index has
//! recorded (no lock: a send is never kept waiting) and empties the file
//! only when everything is in and it can take the lock without waiting.
//! Ingestion is idempotent (rows are keyed by endpoint and id, events by
//! their journal key), so a crash anywhere only replays records the index
//! already has.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::envelope::Envelope;
use crate::error::{IoContext, Result};
use crate::home;
use crate::store::rows::{Event, SentRow};
use crate::store::state::Slots;

/// `journal` in `dir` (the relay home).
#[must_use]
pub fn file(dir: &Path) -> PathBuf {
    dir.join("journal")
}

/// One journal line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum Record {
    /// An index row for a delivered or dead-lettered copy.
    Sent {
        /// When (ms).
        at: u64,
        /// Mailbox name.
        endpoint: String,
        /// Message id.
        id: String,
        /// Subject as sent.
        subject: String,
        /// Sender.
        sender: String,
        /// Trace id.
        trace_id: String,
        /// TTL deadline (ms).
        expires_at: u64,
        /// Priority rank.
        priority: u8,
        /// Sent as a half-open probe.
        probe: bool,
        /// Dead-letter code, when dead-lettered.
        code: Option<String>,
        /// Dead-letter reason, when dead-lettered.
        reason: Option<String>,
    },
    /// A copy whose `Sent` row was appended but which then could not be
    /// delivered: its row goes again (rows go to the journal before their
    /// copy is made visible, so the index never lacks a delivered message).
    Unsent {
        /// Mailbox name.
        endpoint: String,
        /// Message id.
        id: String,
    },
    /// A claim (`consumer`): the row is claimed at `at`, with its lease
    /// deadline (`None` for an at-most-once claim). Carries what a row
    /// needs, for a message the index does not have yet.
    Claimed {
        /// When (ms).
        at: u64,
        /// Mailbox name.
        endpoint: String,
        /// Message id.
        id: String,
        /// Subject as sent.
        subject: String,
        /// Sender.
        sender: String,
        /// Trace id.
        trace_id: String,
        /// When it was sent (ms; the envelope's `createdAt`).
        sent_at: u64,
        /// TTL deadline (ms).
        expires_at: u64,
        /// Priority rank.
        priority: u8,
        /// Lease deadline (ms).
        lease_until: Option<u64>,
    },
    /// An ack (`consumer`): the row is acked at `at`.
    Acked {
        /// When (ms).
        at: u64,
        /// Mailbox name.
        endpoint: String,
        /// Message id.
        id: String,
    },
    /// An event.
    Event {
        /// Unique per record: replays are recognised by it.
        key: String,
        /// When (ms).
        at: u64,
        /// Event kind.
        kind: String,
        /// Sender concerned.
        sender: Option<String>,
        /// Endpoint concerned.
        endpoint: Option<String>,
        /// Message concerned.
        message_id: Option<String>,
        /// Kind-specific detail.
        detail: serde_json::Value,
    },
}

impl Record {
    /// The index row of `row`, sent at `now`.
    #[must_use]
    pub fn sent(row: &SentRow<'_>, now: u64) -> Self {
        let (code, reason) = row.failure.unzip();
        let env = row.envelope;
        Record::Sent {
            at: now,
            endpoint: row.endpoint.to_string(),
            id: env.id.clone(),
            subject: env.subject.clone(),
            sender: env.from.clone(),
            trace_id: env.trace().to_string(),
            expires_at: env.budget.ttl,
            priority: env.priority().rank(),
            probe: row.probe,
            code: code.map(|c| c.to_string()),
            reason: reason.map(str::to_string),
        }
    }
}

/// Index rows and events decided by one command (the reliability layer,
/// dead letters, notices), in order. The caller decides where they go: to
/// the journal (`Journal::take`, then `flush`) or into an index
/// transaction (`Tx::record`).
#[derive(Debug, Default)]
pub struct Outbox {
    records: Vec<Record>,
}

impl Outbox {
    /// Adds index rows for copies delivered or dead-lettered.
    pub fn sent(&mut self, rows: &[SentRow<'_>], now: u64) {
        self.records
            .extend(rows.iter().map(|r| Record::sent(r, now)));
    }

    /// Adds an event (keyed when it goes to the journal).
    pub fn event(&mut self, e: &Event<'_>, now: u64) {
        self.records.push(Record::Event {
            key: String::new(),
            at: now,
            kind: e.kind.to_string(),
            sender: e.sender.map(str::to_string),
            endpoint: e.endpoint.map(str::to_string),
            message_id: e.message_id.map(str::to_string),
            detail: e.detail.clone(),
        });
    }

    /// Adds a dead letter at `row.endpoint`: its failed row and the
    /// `dead_letter` event. The one place a dead letter is accounted.
    pub fn dead_letter(&mut self, row: &SentRow<'_>, now: u64) {
        let Some((code, reason)) = row.failure else {
            return;
        };
        self.sent(std::slice::from_ref(row), now);
        let env = row.envelope;
        self.event(
            &Event::dead_letter(Some(&env.from), row.endpoint, &env.id, code, reason),
            now,
        );
    }

    /// Withdraws the row of a copy added but then not delivered (see
    /// `Record::Unsent`).
    pub fn unsent(&mut self, endpoint: &str, id: &str) {
        self.records.push(Record::Unsent {
            endpoint: endpoint.to_string(),
            id: id.to_string(),
        });
    }

    /// Appends everything added so far to the journal in `dir` (one
    /// `write`; see `Journal::flush`), leaving it empty; returns the
    /// journal's size after it (0 when there was nothing to append).
    pub fn flush(&mut self, dir: &Path) -> Result<u64> {
        let mut journal = Journal::default();
        journal.take(self);
        journal.flush(dir)
    }

    /// Writes `slots` back (releasing their lock), then appends everything
    /// to the journal, even if the state could not be written; returns the
    /// journal's size after it, or the first error.
    pub fn commit(&mut self, slots: &mut Slots, dir: &Path) -> Result<u64> {
        let saved = slots.release();
        let appended = self.flush(dir);
        saved.and(appended)
    }

    /// Everything added so far, in order, leaving it empty.
    pub fn drain(&mut self) -> std::vec::Drain<'_, Record> {
        self.records.drain(..)
    }
}

/// Records buffered by one process, appended with one `write`.
#[derive(Debug)]
pub struct Journal {
    prefix: String,
    next: u32,
    buf: Vec<u8>,
}

impl Default for Journal {
    fn default() -> Self {
        Journal {
            prefix: crate::envelope::random_ulid().to_string(),
            next: 0,
            // A torn append (a kill mid-write) then loses only itself: the
            // next append starts on a line of its own.
            buf: b"\n".to_vec(),
        }
    }
}

impl Journal {
    fn push(&mut self, r: &Record) {
        // Encoding plain data into a Vec cannot fail.
        if serde_json::to_writer(&mut self.buf, r).is_ok() {
            self.buf.push(b'\n');
        }
    }

    /// Buffers the claim of `env` at `endpoint` (see `Record::Claimed`).
    pub fn claimed(&mut self, endpoint: &str, env: &Envelope, lease_until: Option<u64>, now: u64) {
        let sent_at = crate::clock::parse_iso8601(&env.created_at).unwrap_or(now);
        self.push(&Record::Claimed {
            at: now,
            endpoint: endpoint.to_string(),
            id: env.id.clone(),
            subject: env.subject.clone(),
            sender: env.from.clone(),
            trace_id: env.trace().to_string(),
            sent_at: sent_at.min(now),
            expires_at: env.budget.ttl,
            priority: env.priority().rank(),
            lease_until,
        });
    }

    /// Buffers the ack of message `id` at `endpoint`.
    pub fn acked(&mut self, endpoint: &str, id: &str, now: u64) {
        self.push(&Record::Acked {
            at: now,
            endpoint: endpoint.to_string(),
            id: id.to_string(),
        });
    }

    /// Buffers everything in `out` (emptying it), each event given its
    /// key: replays are recognised by it.
    pub fn take(&mut self, out: &mut Outbox) {
        for mut r in out.drain() {
            if let Record::Event { key, .. } = &mut r {
                self.next += 1;
                *key = format!("{}.{}", self.prefix, self.next);
            }
            self.push(&r);
        }
    }

    /// Appends everything buffered to the journal in `dir`; returns the
    /// journal's size after it (0 when there was nothing to append).
    /// On failure nothing buffered is kept (a short write leaves at most a
    /// torn line, which ingestion skips).
    pub fn flush(&mut self, dir: &Path) -> Result<u64> {
        if self.buf.len() <= 1 {
            return Ok(0);
        }
        use rustix::fs::OFlags;
        let path = file(dir);
        let (mut f, md) = home::create_own(&path, OFlags::WRONLY | OFlags::APPEND, "journal")?;
        f.lock_shared().ctx("cannot lock", &path)?;
        let written = f.write_all(&self.buf).ctx("cannot append to", &path);
        let appended = self.buf.len() as u64;
        self.buf.truncate(1);
        written?;
        // At least this much: other sends may have appended meanwhile.
        Ok(md.len() + appended)
    }
}

impl Record {
    /// Whether its numbers fit the index (SQLite integers are signed).
    fn in_range(&self) -> bool {
        let fit = |v: u64| i64::try_from(v).is_ok();
        match self {
            Record::Sent { at, .. } | Record::Event { at, .. } | Record::Acked { at, .. } => {
                fit(*at)
            }
            Record::Claimed {
                at,
                sent_at,
                lease_until,
                ..
            } => fit(*at) && fit(*sent_at) && lease_until.is_none_or(fit),
            Record::Unsent { .. } => true,
        }
    }
}

/// Parses journal text into records; lines that do not parse (a torn
/// append, anything not written by relay) or whose numbers are out of range
/// are counted and skipped.
#[must_use]
pub fn parse(text: &[u8]) -> (Vec<Record>, usize) {
    let mut records = Vec::new();
    let mut bad = 0;
    for line in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        match serde_json::from_slice::<Record>(line) {
            Ok(r) if r.in_range() => records.push(r),
            _ => bad += 1,
        }
    }
    (records, bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_torn_lines_are_skipped() {
        let (mut j, mut out) = (Journal::default(), Outbox::default());
        out.event(
            &Event {
                kind: crate::vocab::EventKind::RateLimitSoft,
                sender: Some("a"),
                endpoint: None,
                message_id: None,
                detail: serde_json::json!({ "used": 8 }),
            },
            7,
        );
        j.take(&mut out);
        let mut text = j.buf.clone();
        text.extend_from_slice(b"{\"t\":\"event\",\"ke");
        let (records, bad) = parse(&text);
        assert_eq!(bad, 1);
        assert_eq!(records.len(), 1);
        let Record::Event { kind, at, key, .. } = &records[0] else {
            panic!("not an event: {records:?}");
        };
        assert_eq!((kind.as_str(), *at), ("rate_limit_soft", 7));
        assert!(key.ends_with(".1"), "{key}");
    }
}
