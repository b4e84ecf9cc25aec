//! The log: the one append-only format of relay's home, its record kinds
//! and its one reader. Two kinds of file hold it (see the map in `store`):
//!
//! - `journal`, shared by every process: the index rows and events that
//!   sends, claims and acks defer instead of opening SQLite (written by
//!   `journal`, moved into the index by `index::Store::ingest`);
//! - `batches/<ulid>.log`, one per durable `send --batch`: the message
//!   files of its chunks, fsynced before they are delivered (written and
//!   settled by `batchlog`).
//!
//! # Framing
//!
//! A file may begin with a header line, `relay-log 2 <boot id>\n` (a batch
//! log always does: the boot it was written on decides whether it is
//! replayed; the journal has none, as every process appends to it and
//! ingestion empties it in place). Then records, each
//!
//! ```text
//! @<head length> <body length> <checksum>\n<head><body>\n
//! ```
//!
//! where the head is one `Record` as compact JSON (`t` names its kind),
//! the body is the bytes it carries (a message's file; empty for every
//! other kind), and the checksum (16 hex digits, `checksum`) covers head
//! and body. A record is whole only if its lengths, checksum and closing
//! newline hold: a torn tail (a process killed mid-append) or a damaged
//! record is detected, never half-read. Blank lines between records are
//! ignored (every append starts with a newline, so an append after a torn
//! one starts on a line of its own).
//!
//! The one reader (`parse`) takes either file, and the formats of the
//! previous version: a journal line that is a bare JSON `Record` (its
//! `{` tells it from a record's `@`), and a batch log with the header
//! `relay-batch-log 1 <boot id>` (`parse_batch_v1`).

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::store::rows::SentRow;

/// The header's first words.
pub const MAGIC: &str = "relay-log 2";
/// The previous batch log's header words.
const MAGIC_BATCH_V1: &str = "relay-batch-log 1";
/// Longest header line read (a boot id is 36 characters).
pub const HEADER_MAX: usize = 256;
/// Longest record (head and body) the reader believes: a message file is
/// at most the payload cap plus its envelope, far below this; a length
/// above it is damage.
pub const RECORD_MAX: usize = 256 << 20;

/// `journal` in `dir` (the relay home).
#[must_use]
pub fn journal_file(dir: &Path) -> PathBuf {
    dir.join("journal")
}

/// `batches/` in the home at `root`.
#[must_use]
pub fn batches_dir(root: &Path) -> PathBuf {
    root.join("batches")
}

/// Whether any batch log is in `root` (a relay home): while one is, a
/// replay could follow a power loss.
#[must_use]
pub fn pending(root: &Path) -> bool {
    fs::read_dir(batches_dir(root)).is_ok_and(|mut rd| {
        rd.any(|e| e.is_ok_and(|e| e.path().extension().is_some_and(|x| x == "log")))
    })
}

/// One record: what it says is in its head (this, as JSON); a `Message`
/// carries the file's bytes as its body.
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
    /// A message file as delivered (a durable batch, before its delivery);
    /// the body is the file's bytes.
    Message {
        /// Mailbox name.
        endpoint: String,
        /// Message id.
        id: String,
    },
    /// A `Message` earlier in the same log whose delivery failed (and was
    /// reported failed): not to be replayed.
    Cancel {
        /// Mailbox name.
        endpoint: String,
        /// Message id.
        id: String,
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
            Record::Unsent { .. } | Record::Message { .. } | Record::Cancel { .. } => true,
        }
    }
}

/// The header line of a log written on boot `boot`.
#[must_use]
pub fn header(boot: &str) -> String {
    format!("{MAGIC} {boot}\n")
}

/// Appends `r` to `buf` as one record carrying `body`, after a newline
/// (see the framing above).
pub fn push(buf: &mut Vec<u8>, r: &Record, body: &[u8]) {
    // Encoding plain data into a Vec cannot fail; the head goes after a
    // frame line of at most 60 bytes, written once its length is known.
    let start = buf.len();
    buf.extend_from_slice(&[b' '; 64]);
    if serde_json::to_writer(&mut *buf, r).is_err() {
        buf.truncate(start);
        return;
    }
    buf.extend_from_slice(body);
    let head_len = buf.len() - start - 64 - body.len();
    let sum = checksum(&buf[start + 64..]);
    let line = format!("\n@{head_len} {} {sum:016x}\n", body.len());
    // The frame line replaces the front of the reserved room.
    let room = 64 - line.len();
    buf.drain(start..start + room);
    buf[start..start + line.len()].copy_from_slice(line.as_bytes());
    buf.push(b'\n');
}

/// A 64-bit checksum of `bytes`, eight at a time: tells a torn or damaged
/// record from a whole one (not meant against a forger).
#[must_use]
pub fn checksum(bytes: &[u8]) -> u64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut h = 0xcbf2_9ce4_8422_2325 ^ (bytes.len() as u64).wrapping_mul(K);
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        let mut a = [0u8; 8];
        a.copy_from_slice(w);
        h = (h ^ u64::from_le_bytes(a)).wrapping_mul(K).rotate_left(29);
    }
    for &b in words.remainder() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^ (h >> 31)
}

/// One whole record read, and the bytes it carries.
#[derive(Debug, PartialEq)]
pub struct Entry<'a> {
    /// The record.
    pub record: Record,
    /// A message's file bytes (empty for every other kind).
    pub body: &'a [u8],
}

/// What to do past a damaged record or line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnDamage {
    /// Count it and go on at the next line: the journal has many writers,
    /// and whole appends follow a torn one.
    Skip,
    /// Stop: a batch log has one writer, so damage is a torn tail, and
    /// nothing after it is to be trusted.
    Stop,
}

/// What `parse` read.
#[derive(Debug, Default)]
pub struct Parsed<'a> {
    /// The boot named by the header, if the data begins with one.
    pub boot: Option<&'a str>,
    /// Whether the data is in the previous version's batch log format.
    pub v1: bool,
    /// The whole records, in order.
    pub entries: Vec<Entry<'a>>,
    /// Records or lines skipped: torn, damaged, not written by relay, or
    /// with numbers out of range.
    pub bad: usize,
    /// Bytes read through: up to the partial record or line at the end, if
    /// any (a process may still be writing it).
    pub used: usize,
    /// The data ends in a partial record or line.
    pub partial: bool,
    /// Reading stopped at damage (`OnDamage::Stop`).
    pub damaged: bool,
}

impl Parsed<'_> {
    /// The messages to replay: every `Message` not cancelled later, as
    /// (endpoint, id, file bytes).
    #[must_use]
    pub fn messages(&self) -> Vec<(&str, &str, &[u8])> {
        let cancelled: std::collections::HashSet<(&str, &str)> = self
            .entries
            .iter()
            .filter_map(|e| match &e.record {
                Record::Cancel { endpoint, id } => Some((endpoint.as_str(), id.as_str())),
                _ => None,
            })
            .collect();
        self.entries
            .iter()
            .filter_map(|e| match &e.record {
                Record::Message { endpoint, id }
                    if !cancelled.contains(&(endpoint.as_str(), id.as_str())) =>
                {
                    Some((endpoint.as_str(), id.as_str(), e.body))
                }
                _ => None,
            })
            .collect()
    }
}

/// The boot id a header line at the start of `data` names, and the
/// offset past it, for either version; `None` without a whole header.
#[must_use]
pub fn read_header(data: &[u8]) -> Option<(&str, usize, bool)> {
    let nl = data.iter().take(HEADER_MAX).position(|&b| b == b'\n')?;
    let line = std::str::from_utf8(&data[..nl]).ok()?;
    let (boot, v1) = match line.strip_prefix(MAGIC) {
        Some(rest) => (rest.strip_prefix(' ')?, false),
        None => (line.strip_prefix(MAGIC_BATCH_V1)?.strip_prefix(' ')?, true),
    };
    Some((boot, nl + 1, v1))
}

/// Reads `data` (a whole log, or a stretch of the journal from a record's
/// start): the header if it begins with one, then every whole record.
#[must_use]
pub fn parse(data: &[u8], on_damage: OnDamage) -> Parsed<'_> {
    let mut out = Parsed::default();
    let mut pos = 0;
    if let Some((boot, after, v1)) = read_header(data) {
        out.boot = Some(boot);
        if v1 {
            out.v1 = true;
            parse_batch_v1(&data[after..], after, &mut out);
            return out;
        }
        pos = after;
    }
    while pos < data.len() {
        let rest = &data[pos..];
        let step = match rest[0] {
            b'\n' => Step::Blank,
            b'@' => frame(rest),
            // The previous version's journal: one JSON record a line.
            b'{' => match rest.iter().position(|&b| b == b'\n') {
                None => Step::Partial,
                Some(nl) => match serde_json::from_slice::<Record>(&rest[..nl]) {
                    Ok(r) if r.in_range() => Step::Whole(Box::new(r), &[], nl + 1),
                    _ => Step::Bad,
                },
            },
            _ => Step::Bad,
        };
        match step {
            Step::Blank => pos += 1,
            Step::Whole(record, body, used) => {
                out.entries.push(Entry {
                    record: *record,
                    body,
                });
                pos += used;
            }
            Step::Unknown(used) => {
                out.bad += 1;
                pos += used;
            }
            Step::Partial => {
                out.partial = true;
                break;
            }
            Step::Bad | Step::BadRecord(_) if on_damage == OnDamage::Stop => {
                out.bad += 1;
                out.damaged = true;
                break;
            }
            Step::Bad | Step::BadRecord(_) => {
                // Go on at the next line (past the head's, for a record);
                // without one, the rest is a line still being written, or
                // garbage the next append ends.
                let from = match step {
                    Step::BadRecord(head) => head,
                    _ => 0,
                };
                match rest[from..].iter().position(|&b| b == b'\n') {
                    Some(nl) => {
                        out.bad += 1;
                        pos += from + nl + 1;
                    }
                    None => {
                        out.partial = true;
                        break;
                    }
                }
            }
        }
        out.used = pos;
    }
    if !out.partial && !out.damaged {
        out.used = data.len();
    }
    out
}

/// One step of the reader.
enum Step<'a> {
    Blank,
    Whole(Box<Record>, &'a [u8], usize),
    Partial,
    Bad,
    /// A record whose frame line (this long) holds but whose head does
    /// not: the frame line and the head's line are skipped as one.
    BadRecord(usize),
    /// A whole record (this long) that is not one this relay reads.
    Unknown(usize),
}

/// Reads the record at the start of `rest` (which begins with `@`).
fn frame(rest: &[u8]) -> Step<'_> {
    // "@<head> <body> <16 hex>": at most 60 bytes.
    let Some(nl) = rest.iter().take(64).position(|&b| b == b'\n') else {
        return if rest.len() < 64 {
            Step::Partial
        } else {
            Step::Bad
        };
    };
    let Some((head_len, body_len, sum)) = std::str::from_utf8(&rest[1..nl]).ok().and_then(|line| {
        let mut w = line.split(' ');
        let head: usize = w.next()?.parse().ok()?;
        let body: usize = w.next()?.parse().ok()?;
        let sum = w.next().filter(|s| s.len() == 16)?;
        let sum = u64::from_str_radix(sum, 16).ok()?;
        (w.next().is_none() && head.checked_add(body)? <= RECORD_MAX).then_some((head, body, sum))
    }) else {
        return Step::Bad;
    };
    let start = nl + 1;
    let end = start + head_len + body_len;
    if rest.len() <= end {
        // A head is one line of compact JSON: a newline in it means this
        // append was torn and another began after it.
        let head = &rest[start..rest.len().min(start + head_len)];
        return if head.contains(&b'\n') {
            Step::BadRecord(start)
        } else {
            Step::Partial
        };
    }
    if rest[end] != b'\n' || checksum(&rest[start..end]) != sum {
        return Step::BadRecord(start);
    }
    match serde_json::from_slice::<Record>(&rest[start..start + head_len]) {
        Ok(r) if r.in_range() => Step::Whole(Box::new(r), &rest[start + head_len..end], end + 1),
        // Whole, but not a record this relay knows (a later version's, or
        // numbers out of range): skipped as a whole.
        _ => Step::Unknown(end + 1),
    }
}

/// The previous version's batch log after its header (`at` bytes in):
/// per copy `<endpoint> <id> <length>\n<file bytes>\n`, a cancelled copy
/// `<endpoint> <id> -\n`. Reading stops at the first entry that is not
/// whole (a batch killed mid-append).
fn parse_batch_v1<'a>(mut rest: &'a [u8], at: usize, out: &mut Parsed<'a>) {
    out.used = at;
    while !rest.is_empty() {
        let line = (|| {
            let nl = rest.iter().position(|&b| b == b'\n')?;
            let line = std::str::from_utf8(&rest[..nl]).ok()?;
            let mut parts = line.split(' ');
            let (endpoint, id, len) = (parts.next()?, parts.next()?, parts.next()?);
            let (endpoint, id) = (endpoint.to_owned(), id.to_owned());
            if len == "-" {
                return Some((Record::Cancel { endpoint, id }, &rest[..0], nl + 1));
            }
            let len: usize = len.parse().ok()?;
            let body = rest.get(nl + 1..nl + 1 + len)?;
            (rest.get(nl + 1 + len) == Some(&b'\n')).then_some(())?;
            Some((Record::Message { endpoint, id }, body, nl + len + 2))
        })();
        let Some((record, body, used)) = line else {
            out.partial = true;
            return;
        };
        out.entries.push(Entry { record, body });
        rest = &rest[used..];
        out.used += used;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(at: u64) -> Record {
        Record::Event {
            key: "k.1".into(),
            at,
            kind: "rate_limit_soft".into(),
            sender: Some("a".into()),
            endpoint: None,
            message_id: None,
            detail: serde_json::json!({ "used": 8 }),
        }
    }

    fn message(id: &str) -> Record {
        Record::Message {
            endpoint: "q.r".into(),
            id: id.into(),
        }
    }

    #[test]
    fn records_round_trip_and_a_torn_tail_is_left_for_later() {
        let mut buf = Vec::new();
        push(&mut buf, &event(7), b"");
        push(&mut buf, &message("01A"), b"{\n  \"a\": 1\n}");
        let whole = buf.len();
        let p = parse(&buf, OnDamage::Stop);
        assert_eq!(
            (p.bad, p.partial, p.damaged, p.used),
            (0, false, false, whole)
        );
        assert_eq!(p.entries[0].record, event(7));
        assert_eq!(p.entries[1].body, b"{\n  \"a\": 1\n}");
        // Every cut inside the second record leaves the first, partial.
        let first = {
            let mut b = Vec::new();
            push(&mut b, &event(7), b"");
            b.len()
        };
        for cut in first + 2..whole {
            let p = parse(&buf[..cut], OnDamage::Skip);
            assert_eq!(p.entries.len(), 1, "cut {cut}");
            assert!(p.partial, "cut {cut}");
            assert_eq!(p.used, first + 1, "cut {cut}");
        }
    }

    #[test]
    fn damage_is_skipped_in_the_journal_and_ends_a_batch_log() {
        let mut buf = Vec::new();
        push(&mut buf, &event(1), b"");
        let mut torn = buf.clone();
        torn.truncate(torn.len() - 5);
        // A torn append, then a whole one (which starts a line of its own).
        push(&mut torn, &event(2), b"");
        let p = parse(&torn, OnDamage::Skip);
        assert_eq!(p.bad, 1);
        assert_eq!(p.entries.len(), 1);
        assert_eq!(p.entries[0].record, event(2));
        // A flipped byte fails the checksum.
        let mut flipped = buf.clone();
        let at = flipped.len() - 4;
        flipped[at] ^= 1;
        push(&mut flipped, &event(3), b"");
        let p = parse(&flipped, OnDamage::Skip);
        assert_eq!((p.bad, p.entries.len()), (1, 1));
        let p = parse(&flipped, OnDamage::Stop);
        assert!(p.damaged && p.entries.is_empty());
        // Old journal lines, blank lines and stray text, mixed.
        let mut mixed = b"\n\n".to_vec();
        serde_json::to_writer(&mut mixed, &event(4)).expect("json");
        mixed.extend_from_slice(b"\nnot ours\n{\"t\":\"event\",\"at\":18446744073709551615}\n");
        push(&mut mixed, &event(5), b"");
        let p = parse(&mixed, OnDamage::Skip);
        let ats: Vec<&Record> = p.entries.iter().map(|e| &e.record).collect();
        assert_eq!(ats, [&event(4), &event(5)]);
        assert_eq!((p.bad, p.partial), (2, false));
    }

    #[test]
    fn the_previous_batch_log_format_is_read() {
        let mut log = b"relay-batch-log 1 boot-a\n".to_vec();
        log.extend_from_slice(b"q 01A 5\nhello\n");
        log.extend_from_slice(b"r.s 01B 2\n{}\n");
        log.extend_from_slice(b"q 01A -\n");
        let p = parse(&log, OnDamage::Stop);
        assert_eq!((p.boot, p.v1, p.partial), (Some("boot-a"), true, false));
        assert_eq!(p.messages(), [("r.s", "01B", &b"{}"[..])]);
        let p = parse(&log[..log.len() - 12], OnDamage::Stop);
        assert_eq!(p.messages(), [("q", "01A", &b"hello"[..])]);
        assert!(p.partial);
        assert!(read_header(b"relay-batch-log 1 boot").is_none());
        assert!(read_header(b"something else\n").is_none());
        let new = header("boot-b");
        assert_eq!(
            read_header(new.as_bytes()),
            Some(("boot-b", new.len(), false))
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config {
            failure_persistence: None,
            ..proptest::test_runner::Config::default()
        })]

        /// A log on disk can be anything (a damaged disk, a stray file):
        /// reading it never panics.
        #[test]
        fn parse_survives_arbitrary_bytes(
            tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400),
        ) {
            for head in [&b""[..], b"relay-log 2 b\n", b"relay-batch-log 1 b\n", b"@3 0 "] {
                let mut log = head.to_vec();
                log.extend_from_slice(&tail);
                let _ = parse(&log, OnDamage::Skip);
                let _ = parse(&log, OnDamage::Stop);
            }
        }

        /// What `push` writes reads back, and any cut leaves the whole
        /// records before it, the rest partial (never damaged).
        #[test]
        fn parse_reads_back_what_was_pushed(
            bodies in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40), 0..8),
            cancel in proptest::collection::vec(proptest::prelude::any::<bool>(), 8),
            cut in 0usize..2000,
        ) {
            let mut log = header("b").into_bytes();
            let mut bounds = vec![log.len()];
            for (i, b) in bodies.iter().enumerate() {
                push(&mut log, &message(&format!("e{i}")), b);
                bounds.push(log.len());
            }
            for (i, _) in bodies.iter().enumerate().filter(|(i, _)| cancel[*i]) {
                push(&mut log, &Record::Cancel { endpoint: "q.r".into(), id: format!("e{i}") }, b"");
                bounds.push(log.len());
            }
            let p = parse(&log, OnDamage::Stop);
            let kept: Vec<&[u8]> = bodies
                .iter()
                .enumerate()
                .filter(|(i, _)| !cancel[*i])
                .map(|(_, b)| b.as_slice())
                .collect();
            proptest::prop_assert!(!p.partial && !p.damaged);
            proptest::prop_assert_eq!(p.messages().iter().map(|m| m.2).collect::<Vec<_>>(), kept);

            let cut = bounds[0] + cut % (log.len() - bounds[0] + 1);
            let p = parse(&log[..cut], OnDamage::Stop);
            proptest::prop_assert!(!p.damaged);
            let whole = bounds.iter().filter(|&&b| b <= cut).count() - 1;
            proptest::prop_assert_eq!(p.entries.len(), whole);
            for (_, id, body) in p.messages() {
                let i: usize = id[1..].parse().expect("id");
                proptest::prop_assert_eq!(body, bodies[i].as_slice());
            }
        }
    }
}
