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
//! `write`. Each record is framed as the log frames it (`log`), and
//! ingestion reads whole records from the offset the index has
//! recorded (no lock: a send is never kept waiting) and empties the file
//! only when everything is in and it can take the lock without waiting.
//! Ingestion is idempotent (rows are keyed by endpoint and id, events by
//! their journal key), so a crash anywhere only replays records the index
//! already has.

use std::io::Write;
use std::path::Path;

use crate::envelope::Envelope;
use crate::error::{IoContext, Result};
use crate::home;
use crate::store::log::{self, Record};
use crate::store::rows::{Event, SentRow};
use crate::store::state::Slots;

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
            // Every record starts a line of its own (`log::push`): a torn
            // append (a kill mid-write) loses only itself.
            buf: Vec::new(),
        }
    }
}

impl Journal {
    fn push(&mut self, r: &Record) {
        log::push(&mut self.buf, r, &[]);
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
    /// torn record, which ingestion skips).
    pub fn flush(&mut self, dir: &Path) -> Result<u64> {
        if self.buf.is_empty() {
            return Ok(0);
        }
        use rustix::fs::OFlags;
        let path = log::journal_file(dir);
        let (mut f, md) = home::create_own(&path, OFlags::WRONLY | OFlags::APPEND, "journal")?;
        f.lock_shared().ctx("cannot lock", &path)?;
        let written = f.write_all(&self.buf).ctx("cannot append to", &path);
        let appended = self.buf.len() as u64;
        self.buf.clear();
        written?;
        // At least this much: other sends may have appended meanwhile.
        Ok(md.len() + appended)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_keyed_and_read_back_as_appended() {
        let (mut j, mut out) = (Journal::default(), Outbox::default());
        for at in [7, 8] {
            out.event(
                &Event {
                    kind: crate::vocab::EventKind::RateLimitSoft,
                    sender: Some("a"),
                    endpoint: None,
                    message_id: None,
                    detail: serde_json::json!({ "used": 8 }),
                },
                at,
            );
        }
        j.take(&mut out);
        j.acked("q", "01A", 9);
        let p = log::parse(&j.buf, log::OnDamage::Skip);
        assert_eq!((p.bad, p.partial, p.used), (0, false, j.buf.len()));
        let keys: Vec<(u64, String)> = p
            .entries
            .iter()
            .filter_map(|e| match &e.record {
                Record::Event { at, key, .. } => Some((*at, key.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(keys.len(), 2);
        assert!(
            keys[0].1.ends_with(".1") && keys[1].1.ends_with(".2"),
            "{keys:?}"
        );
        assert_ne!(keys[0].1, keys[1].1);
        assert!(matches!(p.entries[2].record, Record::Acked { at: 9, .. }));
    }
}
