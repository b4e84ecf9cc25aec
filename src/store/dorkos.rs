//! DorkOS's index database on a shared home (`dorkos-http.md` §7): when a
//! DorkOS server (`<home>/../dork.db`) or DorkOS's relay library on its own
//! (`<home>/index.db`) uses this home, relay keeps that index in step with
//! its own traffic, so DorkOS's inbox, backpressure, rate limit, dead
//! letters and metrics see relay's messages and neither side miscounts.
//!
//! What it owns and must not do:
//! - It never creates the file or its tables (DorkOS's migrator would then
//!   fail): it writes only into a file that exists, has
//!   `__drizzle_migrations`, and whose `relay_index` (and, for `dork.db`,
//!   `relay_traces`) have DorkOS's columns. Anything else is not DorkOS's
//!   index and is left alone.
//! - It opens the file as DorkOS does (§7.2): journal mode as it is (WAL),
//!   `synchronous=NORMAL`, `foreign_keys=ON`, `recursive_triggers=ON`, one
//!   short `BEGIN IMMEDIATE` transaction per relay step, no read
//!   transaction held open.
//! - It never makes relay wait on DorkOS: relay waits at most
//!   [`BUSY_MS`] for DorkOS's write lock (DorkOS waits 5 s for relay's,
//!   and relay's transactions are a few statements). What cannot be
//!   written then (DorkOS busy, a read-only or damaged file) is appended to
//!   relay's own record of what DorkOS is owed, `dorkos.<file>.pending` in
//!   the home, and written by the next relay command that touches the
//!   index (or `relay doctor --repair`, which waits as long as DorkOS does),
//!   in order, before anything newer. Writers take that file's lock around
//!   their attempt, so relay's updates reach DorkOS in the order they
//!   happened.
//! - With no DorkOS index, every hook costs one cached check: two `stat`s
//!   per process (again after [`RECHECK`] in long-running commands).
//!
//! The rows are DorkOS's publish's (§7.4/§7.6): `(id, '*')` `delivered`
//! with the sender per publish, `(id, endpoint)` `pending` with no sender
//! per copy, `failed` per dead letter; ack sets `delivered`, nack and every
//! other dead letter `failed`, a requeue `pending`; purges and endpoint
//! removal delete rows. A copy's row is inserted only if none exists, and
//! an ack or nack writes its row whole when there is none yet, so a
//! consumer that finishes a copy before its send wrote the row still
//! leaves it finished. `dork.db` (a server) also gets one `relay_traces`
//! span per publish, as DorkOS's server writes.

use std::fs;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags, params};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::clock::iso8601;
use crate::envelope::Envelope;
use crate::error::{Error, Result};
use crate::output;

/// How long relay waits for DorkOS's write lock before it keeps an update
/// for later (milliseconds).
pub const BUSY_MS: u64 = 200;
/// How long `doctor --repair` waits for it: DorkOS's own busy timeout.
pub const PATIENT_MS: u64 = 5000;
/// How often a long-running command looks again for an index that was
/// missing (or appeared).
pub const RECHECK: Duration = Duration::from_secs(2);
/// Largest pending file kept: past it, updates are dropped with a warning
/// (`doctor` reports the index as behind).
const PENDING_MAX: u64 = 16 << 20;

/// The file DorkOS's server uses, one level above the relay home.
pub const SERVER_FILE: &str = "dork.db";
/// The file DorkOS's relay library uses on its own, in the home.
pub const STANDALONE_FILE: &str = "index.db";

/// Columns relay writes in `relay_index`.
const INDEX_COLUMNS: &[&str] = &[
    "id",
    "subject",
    "endpoint_hash",
    "status",
    "expires_at",
    "sender",
    "created_at",
];
/// Columns relay writes in `relay_traces`.
const TRACE_COLUMNS: &[&str] = &[
    "id",
    "message_id",
    "trace_id",
    "subject",
    "status",
    "kind",
    "sent_at",
    "delivered_at",
    "processed_at",
    "error_message",
    "metadata",
];

/// Which DorkOS wrote the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Kind {
    /// A DorkOS server: `<home>/../dork.db`, with traces.
    Server,
    /// DorkOS's relay library alone: `<home>/index.db`, no traces.
    Standalone,
}

/// DorkOS's index status vocabulary.
pub use crate::vocab::DorkStatus as Status;
use crate::vocab::{Code, Rejection, TraceStatus};

/// One row as DorkOS's `insertMessage` writes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Row {
    id: String,
    subject: String,
    endpoint: String,
    status: Status,
    expires_at: Option<String>,
    sender: Option<String>,
    created_at: String,
}

impl Row {
    /// The row of `env` at `endpoint` (`*` for the publish's accounting
    /// row, which alone carries the sender).
    fn of(env: &Envelope, endpoint: &str, status: Status) -> Self {
        Row {
            id: env.id.clone(),
            subject: env.subject.clone(),
            endpoint: endpoint.to_string(),
            status,
            expires_at: expires(env.budget.ttl),
            sender: (endpoint == "*").then(|| env.from.clone()),
            created_at: env.created_at.clone(),
        }
    }

    /// The row of a message file's JSON (any shape another program wrote),
    /// if it has what a row needs.
    fn of_value(v: &Value, endpoint: &str, status: Status) -> Option<Self> {
        Some(Row {
            id: v.get("id")?.as_str()?.to_string(),
            subject: v.get("subject")?.as_str()?.to_string(),
            endpoint: endpoint.to_string(),
            status,
            expires_at: v
                .pointer("/budget/ttl")
                .and_then(Value::as_u64)
                .and_then(expires),
            sender: None,
            created_at: v.get("createdAt")?.as_str()?.to_string(),
        })
    }
}

/// `new Date(ttl).toISOString()`, NULL for a ttl of 0 (as DorkOS).
fn expires(ttl: u64) -> Option<String> {
    (ttl > 0).then(|| iso8601(ttl))
}

/// One `relay_traces` span, as DorkOS's server writes one per publish.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Span {
    id: String,
    message_id: String,
    trace_id: String,
    subject: String,
    status: String,
    sent_at: String,
    delivered_at: Option<String>,
    error_message: Option<String>,
    metadata: String,
}

/// One update of DorkOS's index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase")]
enum Op {
    /// DorkOS's upsert: replaces subject, status, created_at; keeps a
    /// non-NULL sender / expires_at when the new one is NULL.
    Upsert(Row),
    /// Inserts the row unless one exists (a send's copy: an ack or nack
    /// that got there first wins).
    Insert(Row),
    /// Sets the status (and expiry, if given) of a row; when there is none
    /// and `row` is given, writes it whole.
    #[serde(rename_all = "camelCase")]
    Status {
        id: String,
        endpoint: String,
        status: Status,
        expires_at: Option<String>,
        row: Option<Row>,
    },
    /// Deletes one row.
    Delete { id: String, endpoint: String },
    /// Deletes every row of an endpoint.
    #[serde(rename_all = "camelCase")]
    DeleteEndpoint { endpoint: String },
    /// Inserts a span unless the message has one (first writer wins).
    Trace(Span),
    /// Rewrites the outcome of the message's span (relay's own, written
    /// before its copies were).
    Retrace(Span),
}

/// One DorkOS index found beside the home.
#[derive(Debug)]
struct Target {
    kind: Kind,
    path: PathBuf,
    pending: PathBuf,
    conn: Option<Connection>,
    /// Why it is not written (not DorkOS's, or not migrated).
    unusable: Option<String>,
    /// DorkOS was found busy: until then, updates go straight to the
    /// pending file (one wait per command, not one per update).
    busy_until: Option<Instant>,
}

/// The indexes found for one home, and when they were looked for.
#[derive(Debug)]
struct Found {
    root: PathBuf,
    at: Instant,
    targets: Vec<Target>,
}

static FOUND: Mutex<Option<Found>> = Mutex::new(None);

/// The index files DorkOS would use for the relay home `root`, and which
/// DorkOS each belongs to (whether or not they exist).
#[must_use]
pub fn candidates(root: &Path) -> Vec<(Kind, PathBuf)> {
    let mut c = vec![(Kind::Standalone, root.join(STANDALONE_FILE))];
    if let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty()) {
        c.push((Kind::Server, parent.join(SERVER_FILE)));
    }
    c
}

/// Relay's pending file for an index file (in the home).
#[must_use]
pub fn pending_file(root: &Path, index: &Path) -> PathBuf {
    let name = index
        .file_name()
        .map_or_else(|| "index".into(), |n| n.to_string_lossy().into_owned());
    root.join(format!("dorkos.{name}.pending"))
}

/// Whether `name` (a file in the relay home) is one of DorkOS's files or
/// relay's record for them: `index.db` and its `-wal`/`-shm`/`-journal`,
/// the pending files. `doctor` leaves them alone.
#[must_use]
pub fn is_dorkos_file(name: &str) -> bool {
    let base = name
        .strip_suffix("-wal")
        .or_else(|| name.strip_suffix("-shm"))
        .or_else(|| name.strip_suffix("-journal"))
        .unwrap_or(name);
    base == STANDALONE_FILE || (name.starts_with("dorkos.") && name.ends_with(".pending"))
}

/// Runs `f` over the DorkOS indexes of `root` (looked for once per
/// process, again after [`RECHECK`]); nothing at all when there are none.
fn with_targets(root: &Path, f: impl FnOnce(&mut [Target])) {
    let Ok(mut found) = FOUND.lock() else {
        return;
    };
    let stale = found
        .as_ref()
        .is_none_or(|x| x.root != root || x.at.elapsed() >= RECHECK);
    if stale {
        let kept = found.take().filter(|x| x.root == root);
        let mut old = kept.map(|x| x.targets).unwrap_or_default();
        let targets = candidates(root)
            .into_iter()
            .filter(|(_, p)| fs::metadata(p).is_ok_and(|m| m.is_file()))
            .map(|(kind, path)| {
                // A connection already open stays open.
                match old.iter().position(|t| t.path == path) {
                    Some(i) => old.swap_remove(i),
                    None => Target {
                        kind,
                        pending: pending_file(root, &path),
                        path,
                        conn: None,
                        unusable: None,
                        busy_until: None,
                    },
                }
            })
            .collect();
        *found = Some(Found {
            root: root.to_path_buf(),
            at: Instant::now(),
            targets,
        });
    }
    if let Some(x) = found.as_mut()
        && !x.targets.is_empty()
    {
        f(&mut x.targets);
    }
}

/// Whether a DorkOS index is beside `root` (the cached check hooks make
/// before doing any work).
#[must_use]
pub fn present(root: &Path) -> bool {
    let mut any = false;
    with_targets(root, |t| any = !t.is_empty());
    any
}

/// Applies `ops` to every DorkOS index of `root`, never failing the relay
/// command: what cannot be written is kept in the pending file (see the
/// module doc), with a warning when the cause is not a busy DorkOS.
fn apply(root: &Path, ops: &[Op]) {
    if ops.is_empty() {
        return;
    }
    with_targets(root, |targets| {
        for t in targets.iter_mut() {
            if let Err(e) = t.write(ops, false) {
                output::warn(&format!(
                    "DorkOS's index {} is not kept in step: {e}",
                    t.path.display()
                ));
            }
        }
    });
}

/// A hook's updates: `ops` builds them only when a DorkOS index is beside
/// `root` (a home without one pays the cached look alone), then `apply`.
fn hook(root: &Path, ops: impl FnOnce() -> Vec<Op>) {
    if present(root) {
        apply(root, &ops());
    }
}

impl Op {
    /// Deletes the row of `id` in `endpoint`.
    fn delete(endpoint: &str, id: &str) -> Op {
        Op::Delete {
            id: id.to_string(),
            endpoint: endpoint.to_string(),
        }
    }
}

impl Target {
    /// Opens (and checks) the connection on first use, waiting `busy_ms`
    /// for DorkOS's locks from now on. `Ok(false)`: not DorkOS's index,
    /// nothing to write.
    fn open(&mut self, busy_ms: u64) -> rusqlite::Result<bool> {
        if self.unusable.is_some() {
            return Ok(false);
        }
        if let Some(c) = &self.conn {
            c.busy_timeout(Duration::from_millis(busy_ms))?;
            return Ok(true);
        }
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(Duration::from_millis(busy_ms))?;
        // A relay command is often the file's only connection: closing it
        // would then checkpoint the WAL into the database (an fsync, the
        // cost of a whole durable delivery on a slow disk). The WAL is left
        // for DorkOS's connection (or relay's next) to checkpoint as it
        // goes, as SQLite does at 1000 pages.
        conn.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
            true,
        )?;
        // DorkOS's settings (db/src/index.ts), except the journal mode,
        // which is the file's (WAL) and is never changed.
        conn.execute_batch(
            "PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; PRAGMA recursive_triggers = ON;",
        )?;
        if let Some(why) = schema_problem(&conn, self.kind)? {
            self.unusable = Some(why);
            return Ok(false);
        }
        self.conn = Some(conn);
        Ok(true)
    }

    /// Writes the pending updates and then `ops` in one transaction, under
    /// the pending file's lock; keeps `ops` in the pending file when that
    /// fails. `patient` waits as long as DorkOS does. Returns the error
    /// worth a warning (not a busy DorkOS).
    fn write(&mut self, ops: &[Op], patient: bool) -> Result<()> {
        let busy = if patient { PATIENT_MS } else { BUSY_MS };
        // Opened before the pending file is made: a file that is not
        // DorkOS's index gets none.
        let opened = match self.open(busy) {
            Ok(false) => return Ok(()),
            Ok(true) => Ok(()),
            Err(e) => Err(e),
        };
        let mut file = self.lock_pending()?;
        let mut text = String::new();
        file.read_to_string(&mut text)
            .map_err(|e| Error::io("cannot read", &self.pending, e))?;
        let mut all: Vec<Op> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        all.extend_from_slice(ops);
        let traces = self.kind == Kind::Server;
        if !patient && self.busy_until.is_some_and(|t| Instant::now() < t) {
            return self.keep(&mut file, text.len() as u64, ops);
        }
        let written = opened.and_then(|()| match self.conn.as_mut() {
            Some(conn) => transact(conn, &all, traces),
            None => Ok(()),
        });
        match written {
            Ok(()) => {
                self.busy_until = None;
                if !text.is_empty() {
                    file.set_len(0)
                        .map_err(|e| Error::io("cannot empty", &self.pending, e))?;
                }
                Ok(())
            }
            Err(e) => {
                let busy = is_busy(&e);
                if busy {
                    self.busy_until = Some(Instant::now() + RECHECK);
                } else {
                    // A damaged or replaced file: open it afresh next time.
                    self.conn = None;
                }
                self.keep(&mut file, text.len() as u64, ops)?;
                if busy {
                    Ok(())
                } else {
                    Err(Error::Store(format!(
                        "{e}; the update is kept in {} and written once DorkOS's index takes it (relay doctor --repair retries now)",
                        self.pending.display()
                    )))
                }
            }
        }
    }

    /// The pending file (created if missing), its lock taken: every writer
    /// of this index holds it, so pending updates keep their order.
    fn lock_pending(&self) -> Result<fs::File> {
        let (file, _) = crate::home::create_own(
            &self.pending,
            rustix::fs::OFlags::RDWR,
            "DorkOS pending file",
        )?;
        crate::lockwait::flock(&file, &self.pending, "the DorkOS pending-file lock")?;
        Ok(file)
    }

    /// Appends `ops` to the pending file (locked, `len` bytes long).
    fn keep(&self, file: &mut fs::File, len: u64, ops: &[Op]) -> Result<()> {
        let mut lines = String::new();
        for op in ops {
            if let Ok(l) = serde_json::to_string(op) {
                lines.push_str(&l);
                lines.push('\n');
            }
        }
        if len.saturating_add(lines.len() as u64) > PENDING_MAX {
            return Err(Error::Store(format!(
                "{} has passed {} MiB; {} update(s) were dropped (relay doctor --repair writes the rest once DorkOS's index takes them)",
                self.pending.display(),
                PENDING_MAX >> 20,
                ops.len()
            )));
        }
        file.seek(std::io::SeekFrom::End(0))
            .and_then(|_| file.write_all(lines.as_bytes()))
            .map_err(|e| Error::io("cannot append to", &self.pending, e))
    }
}

/// Whether an error is DorkOS holding its lock (then the update waits).
fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// Why the file is not a DorkOS index relay may write, if it is not.
fn schema_problem(conn: &Connection, kind: Kind) -> rusqlite::Result<Option<String>> {
    let has_table = |name: &str| -> rusqlite::Result<bool> {
        conn.query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
            [name],
            |r| r.get::<_, i64>(0),
        )
        .map(|n| n > 0)
    };
    if !has_table("__drizzle_migrations")? {
        return Ok(Some(
            "no __drizzle_migrations table: not (yet) migrated by DorkOS".into(),
        ));
    }
    let mut tables = vec![("relay_index", INDEX_COLUMNS)];
    if kind == Kind::Server {
        tables.push(("relay_traces", TRACE_COLUMNS));
    }
    for (table, wanted) in tables {
        let mut stmt = conn.prepare("SELECT name FROM pragma_table_info(?1)")?;
        let cols: Vec<String> = stmt
            .query_map([table], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        if cols.is_empty() {
            return Ok(Some(format!("no {table} table")));
        }
        let missing: Vec<&str> = wanted
            .iter()
            .filter(|w| !cols.iter().any(|c| c == *w))
            .copied()
            .collect();
        if !missing.is_empty() {
            return Ok(Some(format!(
                "{table} lacks column(s) {}",
                missing.join(", ")
            )));
        }
    }
    Ok(None)
}

const UPSERT: &str = "INSERT INTO relay_index (id, subject, endpoint_hash, status, expires_at, sender, created_at) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
     ON CONFLICT (id, endpoint_hash) DO UPDATE SET subject = excluded.subject, status = excluded.status, \
     created_at = excluded.created_at, sender = COALESCE(excluded.sender, relay_index.sender), \
     expires_at = COALESCE(excluded.expires_at, relay_index.expires_at)";
const INSERT: &str = "INSERT INTO relay_index (id, subject, endpoint_hash, status, expires_at, sender, created_at) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (id, endpoint_hash) DO NOTHING";

/// Writes `ops` in one `BEGIN IMMEDIATE` transaction (spans only if
/// `traces`).
fn transact(conn: &mut Connection, ops: &[Op], traces: bool) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    for op in ops {
        match op {
            Op::Upsert(r) => row(&tx, UPSERT, r)?,
            Op::Insert(r) => row(&tx, INSERT, r)?,
            Op::Status {
                id,
                endpoint,
                status,
                expires_at,
                row: whole,
            } => {
                let n = set_status(&tx, id, endpoint, *status, expires_at.as_deref())?;
                if n == 0
                    && let Some(r) = whole
                {
                    row(&tx, INSERT, r)?;
                }
            }
            Op::Delete { id, endpoint } => delete_row(&tx, id, endpoint)?,
            Op::DeleteEndpoint { endpoint } => {
                tx.prepare_cached("DELETE FROM relay_index WHERE endpoint_hash = ?1")?
                    .execute([endpoint])?;
            }
            Op::Trace(s) if traces => {
                tx.prepare_cached(
                    "INSERT INTO relay_traces (id, message_id, trace_id, subject, status, kind, sent_at, \
                     delivered_at, processed_at, error_message, metadata) \
                     VALUES (?1, ?2, ?3, ?4, ?5, 'delivery', ?6, ?7, NULL, ?8, ?9) \
                     ON CONFLICT DO NOTHING",
                )?
                .execute(params![
                    s.id,
                    s.message_id,
                    s.trace_id,
                    s.subject,
                    s.status,
                    s.sent_at,
                    s.delivered_at,
                    s.error_message,
                    s.metadata
                ])?;
            }
            Op::Retrace(s) if traces => {
                tx.prepare_cached(
                    "UPDATE relay_traces SET status = ?2, delivered_at = ?3, error_message = ?4, metadata = ?5 \
                     WHERE message_id = ?1",
                )?
                .execute(params![
                    s.message_id,
                    s.status,
                    s.delivered_at,
                    s.error_message,
                    s.metadata
                ])?;
            }
            Op::Trace(_) | Op::Retrace(_) => {}
        }
    }
    tx.commit()
}

/// Sets the status of the row of `id` in `endpoint` (and its expiry, if
/// given); how many rows it changed (0: there is none).
fn set_status(
    tx: &rusqlite::Transaction<'_>,
    id: &str,
    endpoint: &str,
    status: Status,
    expires_at: Option<&str>,
) -> rusqlite::Result<usize> {
    tx.prepare_cached(
        "UPDATE relay_index SET status = ?3, expires_at = COALESCE(?4, expires_at) \
         WHERE id = ?1 AND endpoint_hash = ?2",
    )?
    .execute(params![id, endpoint, status.as_str(), expires_at])
}

/// Deletes the row of `id` in `endpoint`.
fn delete_row(tx: &rusqlite::Transaction<'_>, id: &str, endpoint: &str) -> rusqlite::Result<()> {
    tx.prepare_cached("DELETE FROM relay_index WHERE id = ?1 AND endpoint_hash = ?2")?
        .execute(params![id, endpoint])
        .map(drop)
}

fn row(tx: &rusqlite::Transaction<'_>, sql: &str, r: &Row) -> rusqlite::Result<()> {
    tx.prepare_cached(sql)?.execute(params![
        r.id,
        r.subject,
        r.endpoint,
        r.status.as_str(),
        r.expires_at,
        r.sender,
        r.created_at
    ])?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Hooks: one narrow call at each point relay changes a message's fate.
// ---------------------------------------------------------------------------

/// What one publish did, for its rows and its span.
#[derive(Debug, Default)]
pub struct Outcome<'a> {
    /// Copies written to `new/`: (endpoint, copy as written).
    pub delivered: Vec<(&'a str, &'a Envelope)>,
    /// Endpoints that refused it or dead-lettered it: (code, reason).
    pub refused: Vec<(Code, &'a str)>,
    /// Refused whole by the sender's rate limit (nothing written).
    pub rate_limited: Option<&'a str>,
    /// It matched no endpoint (dead-lettered under its subject).
    pub no_match: bool,
    /// How long the publish took.
    pub duration_ms: u64,
}

/// The rows a send writes before its copies become visible, in one
/// transaction: the publish's `*` row, one `pending` row per copy about to
/// be written (`out.delivered`; inserted only if missing), and its span as
/// it will be if every copy is written. Copies that then fail are taken
/// out by [`unsent`] and the span corrected by [`retraced`].
pub fn delivering(root: &Path, sends: &[(&Envelope, Outcome<'_>)], now: u64) {
    hook(root, || {
        let mut ops = Vec::new();
        for (env, out) in sends {
            ops.push(Op::Upsert(Row::of(env, "*", Status::Delivered)));
            for (ep, copy) in &out.delivered {
                ops.push(Op::Insert(Row::of(copy, ep, Status::Pending)));
            }
            ops.push(Op::Trace(span(env, out, now)));
        }
        ops
    });
}

/// Corrects the span [`delivering`] wrote when the publish ended otherwise
/// (a copy that could not be written).
pub fn retraced(root: &Path, env: &Envelope, out: &Outcome<'_>, now: u64) {
    hook(root, || vec![Op::Retrace(span(env, out, now))]);
}

/// Takes out the row of a copy recorded by [`delivering`] whose delivery
/// then failed.
pub fn unsent(root: &Path, endpoint: &str, id: &str) {
    hook(root, || vec![Op::delete(endpoint, id)]);
}

/// After a publish: its `*` row (for publishes that wrote no copy) and its
/// one span (servers only), per [`Outcome`] and DorkOS's status rule.
pub fn published(root: &Path, env: &Envelope, out: &Outcome<'_>, now: u64) {
    hook(root, || {
        let mut ops = Vec::new();
        if out.rate_limited.is_none() {
            ops.push(Op::Upsert(Row::of(env, "*", Status::Delivered)));
        }
        ops.push(Op::Trace(span(env, out, now)));
        ops
    });
}

/// The span DorkOS's server would record for this publish (§5.1).
fn span(env: &Envelope, out: &Outcome<'_>, now: u64) -> Span {
    let delivered = out.delivered.len();
    let budget_code = out
        .refused
        .iter()
        .map(|(code, _)| *code)
        .find(|c| c.is_budget());
    let all_budget =
        delivered == 0 && !out.refused.is_empty() && out.refused.iter().all(|(c, _)| c.is_budget());
    let status = if delivered > 0 {
        TraceStatus::Delivered
    } else if out.rate_limited.is_some() || !out.refused.is_empty() {
        TraceStatus::Failed
    } else {
        TraceStatus::NoSubscriber
    };
    let mut metadata = json!({
        "deliveredTo": delivered,
        "rejectedCount": out.refused.len() + usize::from(out.rate_limited.is_some()),
        "hasAdapterResult": false,
        "durationMs": out.duration_ms,
    });
    let mut error = None;
    if let Some(why) = out.rate_limited {
        metadata["rejectionCode"] = Rejection::RateLimited.as_str().into();
        error = Some(why.to_string());
    } else if all_budget {
        metadata["rejectionCode"] = Rejection::BudgetExceeded.as_str().into();
        if let Some(c) = budget_code {
            metadata["budgetCode"] = c.as_str().into();
        }
        error = out.refused.first().map(|(_, r)| (*r).to_string());
    } else if delivered == 0 {
        error = out.refused.first().map(|(_, r)| (*r).to_string());
    }
    Span {
        id: crate::envelope::new_id(now),
        message_id: env.id.clone(),
        trace_id: env.trace().to_string(),
        subject: env.subject.clone(),
        status: status.to_string(),
        sent_at: iso8601(now),
        delivered_at: (delivered > 0).then(|| iso8601(now)),
        error_message: error,
        metadata: metadata.to_string(),
    }
}

/// A message written straight into `failed/` of `endpoint` (a dead letter
/// before delivery): its `failed` row, the envelope as rejected.
pub fn dead_lettered(root: &Path, endpoint: &str, env: &Envelope) {
    hook(root, || {
        vec![Op::Upsert(Row::of(env, endpoint, Status::Failed))]
    });
}

/// Where a claimed message went: `delivered` (ack) or `failed` (nack or
/// any dead letter from `cur/`). `file` is its JSON when known, for the
/// row to write whole should there be none yet.
pub fn finished(root: &Path, endpoint: &str, id: &str, status: Status, file: Option<&Value>) {
    hook(root, || {
        vec![Op::Status {
            id: id.to_string(),
            endpoint: endpoint.to_string(),
            status,
            expires_at: None,
            row: file.and_then(|v| Row::of_value(v, endpoint, status)),
        }]
    });
}

/// A dead letter moved back to `new/` (with a fresh lifetime when `env`
/// was rewritten).
pub fn requeued(root: &Path, endpoint: &str, env: &Envelope) {
    hook(root, || {
        vec![Op::Status {
            id: env.id.clone(),
            endpoint: endpoint.to_string(),
            status: Status::Pending,
            expires_at: expires(env.budget.ttl),
            row: Some(Row::of(env, endpoint, Status::Pending)),
        }]
    });
}

/// A dead letter deleted (purge).
pub fn removed(root: &Path, endpoint: &str, id: &str) {
    hook(root, || vec![Op::delete(endpoint, id)]);
}

/// An endpoint removed with its mailbox.
pub fn endpoint_removed(root: &Path, endpoint: &str) {
    hook(root, || {
        vec![Op::DeleteEndpoint {
            endpoint: endpoint.to_string(),
        }]
    });
}

// ---------------------------------------------------------------------------
// For doctor.
// ---------------------------------------------------------------------------

/// What `doctor` says about one DorkOS index.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    /// Which DorkOS.
    pub kind: Kind,
    /// The index file.
    pub path: String,
    /// Whether relay keeps it in step (false: not DorkOS's index, with why).
    pub in_step: bool,
    /// Why it is not written, if it is not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// Updates waiting in the pending file.
    pub pending: usize,
    /// Pending updates written by this check (with `repair`).
    pub caught_up: usize,
    /// The pending file.
    pub pending_file: String,
}

/// Every DorkOS index of `root`; with `repair`, writes what is pending
/// first (waiting as long as DorkOS would).
#[must_use]
pub fn health(root: &Path, repair: bool) -> Vec<Health> {
    let mut out = Vec::new();
    with_targets(root, |targets| {
        let count = |t: &Target| {
            fs::read_to_string(&t.pending)
                .map(|s| s.lines().count())
                .unwrap_or(0)
        };
        for t in targets.iter_mut() {
            let mut problem = None;
            let before = count(t);
            if repair
                && before > 0
                && let Err(e) = t.write(&[], true)
            {
                problem = Some(e.to_string());
            }
            if let Err(e) = t.open(PATIENT_MS) {
                problem = Some(e.to_string());
            }
            let pending = count(t);
            out.push(Health {
                caught_up: before.saturating_sub(pending),
                kind: t.kind,
                path: t.path.display().to_string(),
                in_step: t.unusable.is_none(),
                problem: t.unusable.clone().or(problem),
                pending,
                pending_file: t.pending.display().to_string(),
            });
        }
    });
    out
}

/// The (endpoint, id) pairs DorkOS's indexes hold (its own mail, and
/// relay's): `doctor` does not take a message DorkOS knows for a stray
/// file relay's index lacks.
#[must_use]
pub fn known(root: &Path) -> std::collections::HashSet<(String, String)> {
    let mut set = std::collections::HashSet::new();
    with_targets(root, |targets| {
        for t in targets.iter_mut() {
            if !matches!(t.open(BUSY_MS), Ok(true)) {
                continue;
            }
            let Some(conn) = t.conn.as_ref() else {
                continue;
            };
            let Ok(mut stmt) = conn
                .prepare("SELECT endpoint_hash, id FROM relay_index WHERE endpoint_hash != '*'")
            else {
                continue;
            };
            if let Ok(rows) = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))) {
                set.extend(rows.flatten());
            }
        }
    });
    set
}

// ---------------------------------------------------------------------------
// Resync: DorkOS's rows of relay's mailboxes against their files.
// ---------------------------------------------------------------------------

/// How long a row may stand without its file before `resync` takes it for
/// a crash's leftover: a send writes its copy's row before the rename
/// (milliseconds).
pub const SETTLE_MS: u64 = 60_000;

/// A message file in a mailbox as `doctor` found it, for [`resync`].
pub struct Copy<'a> {
    /// The mailbox.
    pub endpoint: &'a str,
    /// Its envelope.
    pub envelope: &'a Envelope,
    /// Where it is: `Pending` in `new/` or `cur/`, `Failed` in `failed/`.
    pub status: Status,
}

/// How far one DorkOS index was out of step with the mailboxes.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Resync {
    /// The index file.
    pub path: String,
    /// Files with no row (given DorkOS's row for them).
    pub missing: usize,
    /// Rows whose status is not where the file is (set to it).
    pub wrong: usize,
    /// Rows of files that are nowhere (relay acked it: `delivered`; else
    /// deleted).
    pub orphaned: usize,
    /// Whether they were written (`repair`).
    pub repaired: bool,
    /// Why it was not looked at, if it was not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// What `resync` asks of the mailboxes as they are now.
pub trait Mailboxes {
    /// Where `id`'s file is in `endpoint`: `Pending` (`new/`, `cur/`),
    /// `Failed`, or `None` when it is nowhere and no send is delivering
    /// there.
    fn now_at(&self, endpoint: &str, id: &str) -> Option<Option<Status>>;
    /// Whether relay's own index has this copy acked.
    fn acked(&self, endpoint: &str, id: &str) -> bool;
}

/// Brings DorkOS's rows of the mailboxes `dirs` back in step with their
/// files (`copies`, as scanned), as after a crash between a send's row and
/// its rename, or between an ack's, nack's or requeue's move and its row:
/// a file with no row gets the row DorkOS's publish writes, a row whose
/// status is not where its file is gets that status, and a row whose file
/// is nowhere ([`SETTLE_MS`] after its message was made) is set
/// `delivered` if relay acked it, else deleted. Each difference is checked
/// again against the mailbox inside DorkOS's write transaction (a
/// command's own row update waits for it and comes after), so traffic
/// beside it is never undone. Only with `repair` is anything written; an
/// index with updates still pending is left to them.
pub fn resync(
    root: &Path,
    dirs: &std::collections::HashSet<String>,
    copies: &[Copy<'_>],
    mailboxes: &dyn Mailboxes,
    now: u64,
    repair: bool,
) -> Vec<Resync> {
    let mut out = Vec::new();
    with_targets(root, |targets| {
        for t in targets.iter_mut() {
            match t.resync(dirs, copies, mailboxes, now, repair) {
                Ok(Some(r)) => out.push(r),
                Ok(None) => {}
                Err(e) => out.push(Resync {
                    path: t.path.display().to_string(),
                    problem: Some(e.to_string()),
                    ..Resync::default()
                }),
            }
        }
    });
    out
}

impl Target {
    /// `resync` of this index; `None`: not DorkOS's index.
    fn resync(
        &mut self,
        dirs: &std::collections::HashSet<String>,
        copies: &[Copy<'_>],
        mailboxes: &dyn Mailboxes,
        now: u64,
        repair: bool,
    ) -> Result<Option<Resync>> {
        let path = self.path.clone();
        let err = |e: rusqlite::Error| Error::Store(format!("{}: {e}", path.display()));
        if !self.open(PATIENT_MS).map_err(err)? {
            return Ok(None);
        }
        let mut r = Resync {
            path: path.display().to_string(),
            ..Resync::default()
        };
        // Under the pending file's lock, as every writer: updates still
        // pending come first (`health` writes them on repair).
        let file = self.lock_pending()?;
        if file.metadata().map(|m| m.len()).unwrap_or(0) > 0 {
            return Err(Error::Store(
                "updates are still pending for it; relay doctor --repair writes them first".into(),
            ));
        }
        let settled = iso8601(now.saturating_sub(SETTLE_MS));
        let Some(conn) = self.conn.as_mut() else {
            return Ok(None);
        };
        let tx = conn
            .transaction_with_behavior(if repair {
                rusqlite::TransactionBehavior::Immediate
            } else {
                rusqlite::TransactionBehavior::Deferred
            })
            .map_err(err)?;
        let mut rows: std::collections::HashMap<(String, String), (Status, String)> = tx
            .prepare("SELECT endpoint_hash, id, status, created_at FROM relay_index WHERE endpoint_hash != '*'")
            .and_then(|mut st| {
                st.query_map([], |row| {
                    Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?, row.get::<_, String>(2)?, row.get::<_, String>(3)?))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()
            })
            .map_err(err)?
            .into_iter()
            .filter(|(ep, ..)| dirs.contains(ep))
            .filter_map(|(ep, id, status, created)| {
                let status = status.parse::<Status>().ok()?;
                Some(((ep, id), (status, created)))
            })
            .collect();
        for c in copies {
            let key = (c.endpoint.to_string(), c.envelope.id.clone());
            let had = rows.remove(&key).map(|(s, _)| s);
            // A `delivered` row beside its file is DorkOS's own consumer
            // between its update and its unlink: left alone.
            if had.is_some_and(|s| s == c.status || s == Status::Delivered)
                || mailboxes.now_at(c.endpoint, &c.envelope.id) != Some(Some(c.status))
            {
                continue;
            }
            let fixed = Row::of(c.envelope, c.endpoint, c.status);
            if had.is_none() {
                r.missing += 1;
                if repair {
                    row(&tx, UPSERT, &fixed).map_err(err)?;
                }
            } else {
                r.wrong += 1;
                if repair {
                    set_status(&tx, &fixed.id, &fixed.endpoint, fixed.status, None).map_err(err)?;
                }
            }
        }
        // The rows left have no file in the scan.
        for ((ep, id), (status, created)) in rows {
            if status == Status::Delivered
                || created >= settled
                || mailboxes.now_at(&ep, &id) != Some(None)
            {
                continue;
            }
            r.orphaned += 1;
            if !repair {
                continue;
            }
            if status == Status::Pending && mailboxes.acked(&ep, &id) {
                set_status(&tx, &id, &ep, Status::Delivered, None).map(drop)
            } else {
                delete_row(&tx, &id, &ep)
            }
            .map_err(err)?;
        }
        if repair {
            tx.commit().map_err(err)?;
            r.repaired = true;
        }
        Ok(Some(r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dorkos_files_are_recognised() {
        for n in [
            "index.db",
            "index.db-wal",
            "index.db-shm",
            "index.db-journal",
            "dorkos.dork.db.pending",
            "dorkos.index.db.pending",
        ] {
            assert!(is_dorkos_file(n), "{n}");
        }
        for n in ["relay.db", "journal", "index.dbx", "dorkos.x"] {
            assert!(!is_dorkos_file(n), "{n}");
        }
    }

    #[test]
    fn candidates_are_the_home_and_its_parent() {
        let c = candidates(Path::new("/u/.dork/relay"));
        assert_eq!(
            c,
            vec![
                (Kind::Standalone, PathBuf::from("/u/.dork/relay/index.db")),
                (Kind::Server, PathBuf::from("/u/.dork/dork.db")),
            ]
        );
    }

    #[test]
    fn ops_round_trip_through_the_pending_file() {
        let ops = vec![
            Op::Insert(Row {
                id: "01A".into(),
                subject: "a.b".into(),
                endpoint: "a.b".into(),
                status: Status::Pending,
                expires_at: Some("2026-01-01T01:00:00.000Z".into()),
                sender: None,
                created_at: "2026-01-01T00:00:00.000Z".into(),
            }),
            Op::Status {
                id: "01A".into(),
                endpoint: "a.b".into(),
                status: Status::Delivered,
                expires_at: None,
                row: None,
            },
            Op::DeleteEndpoint {
                endpoint: "a.b".into(),
            },
        ];
        for op in ops {
            let line = serde_json::to_string(&op).unwrap_or_default();
            let back: Op = serde_json::from_str(&line).unwrap_or(Op::Delete {
                id: String::new(),
                endpoint: String::new(),
            });
            assert_eq!(back, op, "{line}");
        }
    }

    #[test]
    fn expiry_is_iso_or_null() {
        assert_eq!(expires(0), None);
        assert_eq!(
            expires(1_767_225_600_000).as_deref(),
            Some("2026-01-01T00:00:00.000Z")
        );
    }
}
