//! The SQLite index `relay.db` (see the map in `store`): one row per
//! (message, endpoint) with status and timestamps, events, idempotency
//! keys, and how far the journal is read. The Maildir stays the source of
//! truth; the index may lag it (a crash between the rename and the insert)
//! and is completed when the message is next seen.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use std::collections::{BTreeMap, HashMap};

use rusqlite::config::DbConfig;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::envelope::Envelope;
use crate::error::{Error, IoContext, Result};
use crate::home;
use crate::store::journal::Outbox;
use crate::store::log::{self, Record};
use crate::store::rows::{ClaimRow, Event, EventRow, ExpiredLease, Row};
use crate::store::state::Slots;
use crate::vocab::{Code, Status};

/// Schema migrations; `PRAGMA user_version` counts how many are applied.
/// Append only: never edit a released step.
const MIGRATIONS: &[&str] = &[
    // 1: the message index.
    "CREATE TABLE messages (
        endpoint   TEXT NOT NULL,
        id         TEXT NOT NULL,
        subject    TEXT NOT NULL,
        sender     TEXT NOT NULL,
        trace_id   TEXT NOT NULL,
        status     TEXT NOT NULL CHECK (status IN ('pending','claimed','acked','failed')),
        sent_at    INTEGER NOT NULL,
        claimed_at INTEGER,
        done_at    INTEGER,
        expires_at INTEGER,
        code       TEXT,
        reason     TEXT,
        PRIMARY KEY (endpoint, id)
     ) WITHOUT ROWID;
     CREATE INDEX messages_by_trace ON messages (trace_id);
     CREATE INDEX messages_by_status ON messages (endpoint, status);",
    // 2: reliability state that must outlive a process, and the event log.
    "ALTER TABLE messages ADD COLUMN priority INTEGER NOT NULL DEFAULT 2;
     ALTER TABLE messages ADD COLUMN probe INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE messages ADD COLUMN lease_until INTEGER;
     ALTER TABLE messages ADD COLUMN lease_counted INTEGER NOT NULL DEFAULT 0;
     CREATE INDEX messages_by_priority ON messages (endpoint, status) WHERE priority != 2;
     CREATE INDEX messages_by_lease ON messages (lease_until) WHERE lease_until IS NOT NULL AND lease_counted = 0;
     CREATE TABLE buckets (
        sender      TEXT PRIMARY KEY,
        tokens      REAL NOT NULL,
        updated_at  INTEGER NOT NULL,
        soft_hits   INTEGER NOT NULL DEFAULT 0,
        hard_hits   INTEGER NOT NULL DEFAULT 0,
        last_hit_at INTEGER
     ) WITHOUT ROWID;
     CREATE TABLE breakers (
        sender           TEXT NOT NULL,
        endpoint         TEXT NOT NULL,
        phase            TEXT NOT NULL,
        failures         INTEGER NOT NULL,
        successes        INTEGER NOT NULL,
        probes_in_flight INTEGER NOT NULL,
        opened_at        INTEGER NOT NULL,
        next_probe_at    INTEGER NOT NULL,
        trips            INTEGER NOT NULL,
        total_trips      INTEGER NOT NULL,
        updated_at       INTEGER NOT NULL,
        PRIMARY KEY (sender, endpoint)
     ) WITHOUT ROWID;
     CREATE TABLE events (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        at         INTEGER NOT NULL,
        kind       TEXT NOT NULL,
        sender     TEXT,
        endpoint   TEXT,
        message_id TEXT,
        detail     TEXT NOT NULL
     );
     CREATE INDEX events_by_at ON events (at);",
    // 3: idempotency keys, and indexes for metrics windows and traces.
    "CREATE TABLE idempotency (
        sender     TEXT NOT NULL,
        key        TEXT NOT NULL,
        message_id TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (sender, key)
     ) WITHOUT ROWID;
     CREATE INDEX messages_by_sent ON messages (sent_at);
     CREATE INDEX messages_by_id ON messages (id);",
    // 4: (endpoint, status) lookups are served by the primary key's prefix;
    // one index less to maintain on every send.
    "DROP INDEX messages_by_status;",
    // 5: buckets and breakers move to the state slots (a send no longer opens
    // the index); events from the journal carry a key so a replay is a no-op.
    "DROP TABLE buckets;
     DROP TABLE breakers;
     ALTER TABLE events ADD COLUMN jkey TEXT;
     CREATE UNIQUE INDEX events_by_jkey ON events (jkey);",
    // 6: how far the index has read the journal.
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;",
    // 7: claims whose lease was counted but which are not given back yet
    // (few, and only until the next sweep): with `messages_by_lease`, the
    // earliest lease deadline of every claim (`Tx::refresh_claims_due`).
    "CREATE INDEX messages_counted_claims ON messages (endpoint, lease_until)
     WHERE lease_counted = 1 AND status = 'claimed';",
    // 8: what `relay status` counts without reading the whole index: dead
    // letters by code (`reports::codes` over all time) and events of one
    // kind (`reports::event_count`).
    "CREATE INDEX messages_failed_by_code ON messages (code) WHERE status = 'failed';
     CREATE INDEX events_by_kind ON events (kind);",
];

/// An open index.
pub struct Store {
    conn: Connection,
    path: PathBuf,
    dir: PathBuf,
    /// Commits are fsynced (`durable_commits`).
    durable: bool,
    /// Ingestion was put off for a full disk (said once).
    deferred: bool,
}

impl Store {
    /// Opens (creating with mode 0600) and migrates the index.
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_with(path, true)
    }

    /// `open` for a reader that must not wait for another process's write
    /// (a server's read route): the journal is moved in only if the write
    /// lock is free now, else left to its holder or the next writer, so
    /// reads may lag the latest sends until then (see `without_waiting`).
    pub fn open_without_waiting(path: &Path) -> Result<Self> {
        Self::open_with(path, false)
    }

    fn open_with(path: &Path, wait: bool) -> Result<Self> {
        if let Some(home) = path.parent() {
            crate::reserve::balance(home);
        }
        use rustix::fs::OFlags;
        // relay's own file: never through a symlink, never a FIFO or device.
        let fresh = home::create_own(path, OFlags::RDWR, "index")?.1.len() == 0;
        for suffix in ["-wal", "-shm", "-journal"] {
            home::check_own(
                Path::new(&format!("{}{suffix}", path.display())),
                "index file",
            )?;
        }
        let conn = Connection::open(path).map_err(|e| store_err(path, e))?;
        if fresh {
            // Only possible before the file has pages: lets `gc` hand the
            // pages it prunes back to the filesystem (`shrink`).
            let _ = conn.execute_batch("PRAGMA auto_vacuum = INCREMENTAL");
        }
        let mut store = Store {
            conn,
            path: path.to_path_buf(),
            dir: path.parent().map(Path::to_path_buf).unwrap_or_default(),
            durable: false,
            deferred: false,
        };
        let hint = |e| match e {
            Error::Damaged(msg) => Error::Damaged(format!(
                "{msg}; run: relay doctor --repair (it moves {p} aside and rebuilds the index from the mailboxes, which keep every message)",
                p = path.display()
            )),
            other => other,
        };
        store.init().map_err(hint)?;
        if wait {
            store.catch_up().map_err(hint)?;
        } else {
            store.without_waiting(Self::catch_up).map_err(hint)?;
        }
        Ok(store)
    }

    /// Numbers this index's events above `floor`, those it holds (in
    /// their order) and every later one: `doctor --repair` gives a rebuilt
    /// index the ids of the one it replaces to continue from, so a stream
    /// resuming from a `Last-Event-ID` (or `relay events --follow`) still
    /// gets what comes after.
    pub fn number_events_above(&mut self, floor: i64) -> Result<()> {
        let path = self.path.clone();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| store_err(&path, e))?;
        let step = || -> rusqlite::Result<()> {
            let low: Option<i64> = tx.query_row("SELECT MIN(id) FROM events", [], |r| r.get(0))?;
            if low.is_some_and(|low| low <= floor) {
                // Through negative ids: no new id meets an old one.
                tx.execute("UPDATE events SET id = -id", [])?;
                tx.execute("UPDATE events SET id = ?1 - id", params![floor])?;
            }
            let top: i64 = tx.query_row(
                "SELECT MAX(?1, COALESCE(MAX(id), 0)) FROM events",
                params![floor],
                |r| r.get(0),
            )?;
            if tx.execute(
                "UPDATE sqlite_sequence SET seq = ?1 WHERE name = 'events'",
                params![top],
            )? == 0
            {
                tx.execute(
                    "INSERT INTO sqlite_sequence (name, seq) VALUES ('events', ?1)",
                    params![top],
                )?;
            }
            Ok(())
        };
        step().map_err(|e| store_err(&path, e))?;
        tx.commit().map_err(|e| store_err(&path, e))
    }

    /// Runs `f` with SQLite told not to wait for the write lock: `None` if
    /// it needed the lock while another connection held it (nothing of
    /// `f`'s uncommitted work is kept). The lock timeout applies again
    /// afterwards.
    ///
    /// Only that lock is skipped. Any other lock `f` waits for (the state
    /// lock `record_time` takes, a mailbox's) is waited for as always, and
    /// its timeout is the error it is (75, naming the lock): it is held
    /// only for a read-decide-write, so one held past the lock timeout is
    /// stuck, not busy, and a reader that hid it would report the state as
    /// sound. The index's lock is told apart by SQLite itself: it calls the
    /// busy handler set here when it finds the lock held.
    pub fn without_waiting<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T>,
    ) -> Result<Option<T>> {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        let busy = Arc::new(AtomicBool::new(false));
        let seen = Arc::clone(&busy);
        self.conn
            .busy_handler(Some(move |_tries: i32| {
                seen.store(true, Ordering::Relaxed);
                false
            }))
            .map_err(|e| self.err(e))?;
        let result = f(self);
        self.conn
            .busy_timeout(crate::lockwait::timeout())
            .map_err(|e| self.err(e))?;
        match result {
            Ok(v) => Ok(Some(v)),
            Err(Error::Locked(_)) if busy.load(Ordering::Relaxed) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn init(&mut self) -> Result<()> {
        self.conn
            .busy_timeout(crate::lockwait::timeout())
            .map_err(|e| self.err(e))?;
        // WAL is persistent in the file; synchronous=NORMAL is per connection.
        // The index is not the source of truth, so it need not fsync on commit.
        // Switching a brand-new file to WAL can report "locked" at once (the
        // busy handler does not cover it) when another process is creating
        // the same index: retry for a while.
        let conn = &self.conn;
        retry_busy(|| conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"))
            .map_err(|e| self.err(e))?;
        // Each relay process lives milliseconds: keep the WAL and shm files
        // between processes instead of checkpointing (with an fsync) on every
        // close; `Drop` checkpoints once the WAL has grown (see there).
        let mut persist = 1;
        self.conn
            .file_control(
                Some(rusqlite::MAIN_DB),
                rusqlite::FileControl::PersistWal(&mut persist),
            )
            .and_then(|()| {
                self.conn
                    .set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)
            })
            .map_err(|e| self.err(e))?;
        let version: usize = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        if version < MIGRATIONS.len() {
            let path = self.path.clone();
            retry_busy(|| self.migrate()).map_err(|e| store_err(&path, e))?;
        } else if version > MIGRATIONS.len() {
            return Err(Error::Config(format!(
                "index {} has schema version {version}, newer than this relay understands ({}); upgrade relay",
                self.path.display(),
                MIGRATIONS.len()
            )));
        }
        Ok(())
    }

    fn migrate(&mut self) -> rusqlite::Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Re-read under the write lock: another process may have migrated.
        let version: usize = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        for (i, step) in MIGRATIONS.iter().enumerate().skip(version) {
            tx.execute_batch(step)?;
            tx.execute_batch(&format!("PRAGMA user_version = {}", i + 1))?;
        }
        tx.commit()
    }

    fn err(&self, e: rusqlite::Error) -> Error {
        store_err(&self.path, e)
    }

    /// Starts a write transaction (`BEGIN IMMEDIATE`): every read in it sees
    /// the state no other process can change until it commits, so
    /// read-decide-write is atomic across processes. The journal is moved
    /// into the index first, so the transaction sees every finished send.
    pub fn begin(&mut self) -> Result<Tx<'_>> {
        self.catch_up()?;
        // While a batch log could be replayed after a power loss, a commit
        // lost with the power could bring back a message acked here.
        if !self.durable && crate::store::log::pending(&self.dir) {
            self.durable_commits()?;
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| store_err(&self.path, e))?;
        Ok(Tx {
            tx,
            path: &self.path,
            slots: Slots::new(&self.dir),
        })
    }

    /// `ingest`, put off on a full disk: the journal keeps its records (their
    /// ingestion is idempotent) for the next command with room, and this
    /// one goes on with an index that may lag the latest sends, as after a
    /// crash (a message is indexed when it is claimed).
    fn catch_up(&mut self) -> Result<()> {
        match self.ingest() {
            Err(e) if e.is_full() => {
                if !self.deferred {
                    self.deferred = true;
                    crate::output::warn(&format!(
                        "the latest sends are not in the index yet (left in the journal until there is room): {e}"
                    ));
                }
                Ok(())
            }
            other => other,
        }
    }

    /// Moves what sends appended to the journal into the index (see
    /// `journal`). Reads from the offset the index has reached, a few MiB
    /// of whole lines per transaction, recording the new offset in the same
    /// transaction; senders are never blocked by it. Once everything is in
    /// and no send is appending, the journal is emptied (offset back to 0
    /// first: a crash in between only replays records, which changes
    /// nothing).
    pub fn ingest(&mut self) -> Result<()> {
        use std::os::unix::fs::MetadataExt;
        const CHUNK: u64 = INGEST_CHUNK;
        let path = log::journal_file(&self.dir);
        let Some((mut f, meta)) = home::open_own(&path, rustix::fs::OFlags::RDWR, "journal")?
        else {
            return Ok(());
        };
        if meta.len() == 0 {
            return Ok(());
        }
        let ino = meta.ino();
        let mut torn = 0;
        loop {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|e| store_err(&self.path, e))?;
            let size = f.metadata().ctx("cannot stat", &path)?.len();
            let offset = journal_offset(&tx, ino, size).map_err(|e| store_err(&self.path, e))?;
            if offset >= size {
                // All in: empty it, unless a send is appending right now
                // (the next reader will).
                if size > 0 && f.try_lock().is_ok() && f.metadata().is_ok_and(|m| m.len() == size) {
                    set_journal_offset(&tx, ino, 0).map_err(|e| store_err(&self.path, e))?;
                    tx.commit().map_err(|e| store_err(&self.path, e))?;
                    f.set_len(0).ctx("cannot empty", &path)?;
                }
                break;
            }
            let at = (ino, offset);
            let Some((bad, _)) = ingest_chunk(&tx, &mut f, &path, &self.path, at, CHUNK)? else {
                break;
            };
            torn += bad;
            tx.commit().map_err(|e| store_err(&self.path, e))?;
        }
        if torn > 0 {
            crate::output::warn(&format!(
                "skipped {torn} torn line(s) in {} (a send killed mid-append, or text not written by relay; a message delivered meanwhile is indexed when next seen)",
                path.display()
            ));
        }
        Ok(())
    }

    /// Makes every later commit of this connection durable (WAL fsynced on
    /// commit), as it is not by default: the index can be rebuilt from the
    /// Maildir, except while batch logs could replay (see `batchlog`).
    fn durable_commits(&mut self) -> Result<()> {
        self.conn
            .execute_batch("PRAGMA synchronous=FULL")
            .map_err(|e| store_err(&self.path, e))?;
        self.durable = true;
        Ok(())
    }

    /// Returns the free pages left by pruning to the filesystem (the index
    /// is created with incremental auto-vacuum); a no-op for older files.
    pub fn shrink(&self) -> Result<()> {
        // Each step frees one page: step to the end (execute_batch steps once).
        self.conn
            .prepare("PRAGMA incremental_vacuum")
            .and_then(|mut st| {
                let mut rows = st.query([])?;
                while rows.next()?.is_some() {}
                Ok(())
            })
            .map_err(|e| self.err(e))
    }

    /// The indexed status of a message at an endpoint, if indexed.
    pub fn status(&self, endpoint: &str, id: &str) -> Result<Option<Status>> {
        self.conn
            .query_row(
                "SELECT status FROM messages WHERE endpoint = ?1 AND id = ?2",
                params![endpoint, id],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// The indexed code and reason of a dead letter at an endpoint, if
    /// indexed as one: what a dead letter without its sidecar (an older
    /// home, which wrote the sidecar after the letter, and crashed
    /// between) is known by.
    pub fn failure(&self, endpoint: &str, id: &str) -> Result<Option<(String, Option<String>)>> {
        self.conn
            .query_row(
                "SELECT code, reason FROM messages
                 WHERE endpoint = ?1 AND id = ?2 AND code IS NOT NULL",
                params![endpoint, id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Priority ranks of pending messages at `endpoint` that are not normal.
    pub fn pending_priorities(&self, endpoint: &str) -> Result<HashMap<String, u8>> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT id, priority FROM messages
                 WHERE endpoint = ?1 AND status = 'pending' AND priority != 2",
            )
            .map_err(|e| self.err(e))?;
        stmt.query_map(params![endpoint], |r| Ok((r.get(0)?, r.get(1)?)))
            .and_then(Iterator::collect)
            .map_err(|e| self.err(e))
    }

    /// `PRAGMA integrity_check`: `None` when the file is sound, else what
    /// is wrong.
    pub fn integrity(&self) -> Result<Option<String>> {
        let rows: Vec<String> = self
            .conn
            .prepare("PRAGMA integrity_check")
            .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
            .map_err(|e| self.err(e))?;
        Ok(match rows.as_slice() {
            [ok] if ok == "ok" => None,
            _ => Some(rows.join("; ")),
        })
    }

    /// What the index knows of one message's claim at `endpoint`.
    pub fn claim_row(&self, endpoint: &str, id: &str) -> Result<Option<ClaimRow>> {
        claim_row(&self.conn, endpoint, id).map_err(|e| self.err(e))
    }

    /// What the index knows of the messages `ids` at `endpoint`, by id.
    pub fn claims(&self, endpoint: &str, ids: &[String]) -> Result<HashMap<String, ClaimRow>> {
        claim_rows(&self.conn, endpoint, ids).map_err(|e| self.err(e))
    }

    /// The claims at `endpoint` whose lease is still to be counted: how
    /// many, and the earliest deadline (from the small partial index of
    /// such leases, whatever the endpoint's history).
    pub fn lease_summary(&self, endpoint: &str) -> Result<(usize, Option<u64>)> {
        self.conn
            .prepare_cached(
                "SELECT COUNT(*), MIN(lease_until) FROM messages INDEXED BY messages_by_lease
                 WHERE lease_until IS NOT NULL AND lease_counted = 0
                   AND endpoint = ?1 AND status = 'claimed'",
            )
            .and_then(|mut st| st.query_row(params![endpoint], |r| Ok((r.get(0)?, r.get(1)?))))
            .map_err(|e| self.err(e))
    }

    /// Runs a read-only query on the index (used by reports).
    pub fn read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T> {
        f(&self.conn).map_err(|e| self.err(e))
    }
}

/// WAL size past which a closing process checkpoints and truncates it.
/// Each new process must re-read (checksum) the whole WAL to rebuild the
/// shared index, so an unbounded WAL would make every process slower.
const WAL_TRUNCATE_BYTES: u64 = 256 * 1024;

impl Drop for Store {
    fn drop(&mut self) {
        let wal = PathBuf::from(format!("{}-wal", self.path.display()));
        if std::fs::metadata(&wal).is_ok_and(|m| m.len() > WAL_TRUNCATE_BYTES) {
            // Never wait: if others are busy, a later process will do it.
            let _ = self.conn.busy_timeout(Duration::ZERO);
            let _ = self.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)");
        }
    }
}

/// An open write transaction; dropped without `commit` it rolls back.
pub struct Tx<'a> {
    tx: rusqlite::Transaction<'a>,
    path: &'a Path,
    /// The state slots, locked when first touched (after the index), written
    /// back after the commit.
    pub slots: Slots,
}

/// The `ClaimRow` of `id` at `endpoint` (a primary-key lookup).
fn claim_row(conn: &Connection, endpoint: &str, id: &str) -> rusqlite::Result<Option<ClaimRow>> {
    let mut stmt = conn.prepare_cached(
        "SELECT sender, status, probe, lease_until, lease_counted FROM messages
         WHERE endpoint = ?1 AND id = ?2",
    )?;
    stmt.query_row(params![endpoint, id], |r| {
        let status: String = r.get(1)?;
        Ok(ClaimRow {
            sender: r.get(0)?,
            status: status.parse().unwrap_or(Status::Claimed),
            probe: r.get(2)?,
            lease_until: r.get(3)?,
            lease_counted: r.get(4)?,
        })
    })
    .optional()
}

/// The `ClaimRow`s of `ids` at `endpoint` that the index has: one lookup
/// each, so the cost follows what is in `cur/`, not the endpoint's history.
fn claim_rows(
    conn: &Connection,
    endpoint: &str,
    ids: &[String],
) -> rusqlite::Result<HashMap<String, ClaimRow>> {
    let mut rows = HashMap::new();
    for id in ids {
        if let Some(row) = claim_row(conn, endpoint, id)? {
            rows.insert(id.clone(), row);
        }
    }
    Ok(rows)
}

impl Tx<'_> {
    fn err(&self, e: rusqlite::Error) -> Error {
        store_err(self.path, e)
    }

    /// Runs one statement of this transaction; how many rows it changed.
    fn exec(&self, sql: &str, params: impl rusqlite::Params) -> Result<usize> {
        self.tx.execute(sql, params).map_err(|e| self.err(e))
    }

    /// Moves into the index, within this transaction, what was appended to
    /// the journal since it began (`Store::begin` ingested the rest): what
    /// consumers journaled meanwhile (`reliability::observe_leases` needs
    /// every lease recorded before it took the state lock).
    pub fn ingest_tail(&self) -> Result<()> {
        use std::os::unix::fs::MetadataExt;
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let path = log::journal_file(dir);
        let Some((mut f, meta)) = home::open_own(&path, rustix::fs::OFlags::RDONLY, "journal")?
        else {
            return Ok(());
        };
        let (ino, size) = (meta.ino(), meta.len());
        let mut offset = journal_offset(&self.tx, ino, size).map_err(|e| self.err(e))?;
        let mut torn = 0;
        while offset < size {
            let at = (ino, offset);
            let Some((bad, next)) =
                ingest_chunk(&self.tx, &mut f, &path, self.path, at, INGEST_CHUNK)?
            else {
                break;
            };
            torn += bad;
            offset = next;
        }
        if torn > 0 {
            crate::output::warn(&format!(
                "skipped torn line(s) in {} (a process killed mid-append, or text not written by relay)",
                path.display()
            ));
        }
        Ok(())
    }

    /// Commits, then writes back the state slots if they were changed.
    pub fn commit(mut self) -> Result<()> {
        let path = self.path;
        self.tx.commit().map_err(|e| store_err(path, e))?;
        self.slots.release()
    }

    /// Marks messages claimed (with an optional lease deadline); a message
    /// the index lacks (dropped into `new/` by another program) gets its row now.
    pub fn record_claimed(
        &self,
        endpoint: &str,
        envs: &[&Envelope],
        lease_until: Option<u64>,
        now: u64,
    ) -> Result<()> {
        let mut stmt = self
            .tx
            .prepare_cached(
                "INSERT INTO messages
                 (endpoint, id, subject, sender, trace_id, status, sent_at, claimed_at, expires_at,
                  priority, lease_until)
                 VALUES (?1, ?2, ?3, ?4, ?5, 'claimed', ?6, ?7, ?8, ?9, ?10)
                 ON CONFLICT (endpoint, id) DO UPDATE
                 SET status = 'claimed', claimed_at = excluded.claimed_at, done_at = NULL,
                     lease_until = excluded.lease_until, lease_counted = 0",
            )
            .map_err(|e| self.err(e))?;
        for env in envs {
            let sent_at = crate::clock::parse_iso8601(&env.created_at).unwrap_or(now);
            stmt.execute(params![
                endpoint,
                env.id,
                env.subject,
                env.from,
                env.trace(),
                sent_at.min(now),
                now,
                sql_ms(env.budget.ttl),
                env.priority().rank(),
                lease_until,
            ])
            .map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    /// Brings `State::prioritized` in line with the index: the endpoints
    /// with a pending or claimed message of other than normal priority.
    /// Under the state lock, after moving in what the journal got since the
    /// transaction began: a send marks its endpoint under that lock once
    /// its copy is visible, and its row went to the journal before, so a
    /// mark is never lost.
    pub fn track_priorities(&mut self) -> Result<()> {
        self.slots.lock()?;
        self.ingest_tail()?;
        let eps: std::collections::BTreeSet<String> = self
            .tx
            .prepare_cached(
                "SELECT DISTINCT endpoint FROM messages INDEXED BY messages_by_priority
                 WHERE priority != 2 AND status IN ('pending', 'claimed')",
            )
            .and_then(|mut st| st.query_map([], |r| r.get(0))?.collect())
            .map_err(|e| self.err(e))?;
        let state = self.slots.lock()?;
        if state.get().prioritized.as_ref() != Some(&eps) {
            state.get_mut().prioritized = Some(eps);
        }
        Ok(())
    }

    /// Sets `State::claims_due` from the index for `endpoint` (or every
    /// endpoint): the earliest lease deadline of its claims, counted or
    /// not. Under the state lock, after moving in what the journal got
    /// meanwhile (as `observe_leases` does), so no journaled lease is
    /// missed.
    pub fn refresh_claims_due(&mut self, endpoint: Option<&str>) -> Result<()> {
        self.slots.lock()?;
        self.ingest_tail()?;
        let due: BTreeMap<String, u64> = self
            .tx
            .prepare_cached(
                "SELECT endpoint, MIN(lease_until) FROM (
                   SELECT endpoint, lease_until FROM messages INDEXED BY messages_by_lease
                   WHERE lease_until IS NOT NULL AND lease_counted = 0 AND status = 'claimed'
                     AND (?1 IS NULL OR endpoint = ?1)
                   UNION ALL
                   SELECT endpoint, lease_until FROM messages INDEXED BY messages_counted_claims
                   WHERE lease_counted = 1 AND status = 'claimed' AND lease_until IS NOT NULL
                     AND (?1 IS NULL OR endpoint = ?1))
                 GROUP BY endpoint",
            )
            .and_then(|mut st| {
                st.query_map(params![endpoint], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect()
            })
            .map_err(|e| self.err(e))?;
        let state = self.slots.lock()?;
        let now = &state.get().claims_due;
        match endpoint {
            Some(ep) if now.get(ep) != due.get(ep) => {
                let map = &mut state.get_mut().claims_due;
                match due.get(ep) {
                    Some(&at) => map.insert(ep.to_string(), at),
                    None => map.remove(ep),
                };
            }
            None if *now != due => state.get_mut().claims_due = due,
            _ => {}
        }
        Ok(())
    }

    /// Marks `endpoint` in `State::prioritized` if `env` is not of normal
    /// priority: it is (again) where a consumer may see it.
    fn mark_prioritized(&mut self, endpoint: &str, env: &Envelope) -> Result<()> {
        if env.priority() != crate::pressure::Priority::Normal {
            self.slots.lock()?.mark_prioritized(endpoint);
        }
        Ok(())
    }

    /// Marks a requeued message pending again (indexing it if the index
    /// lacks it), clearing its claim and failure.
    pub fn record_requeued(&mut self, endpoint: &str, env: &Envelope) -> Result<()> {
        self.mark_prioritized(endpoint, env)?;
        self.tx
            .prepare_cached(
                "INSERT INTO messages
                 (endpoint, id, subject, sender, trace_id, status, sent_at, expires_at, priority)
                 VALUES (?1, ?2, ?3, ?4, ?5, 'pending', ?6, ?7, ?8)
                 ON CONFLICT (endpoint, id) DO UPDATE SET
                   status = 'pending', claimed_at = NULL, done_at = NULL, code = NULL,
                   reason = NULL, lease_until = NULL, lease_counted = 0, probe = 0",
            )
            .and_then(|mut st| {
                st.execute(params![
                    endpoint,
                    env.id,
                    env.subject,
                    env.from,
                    env.trace(),
                    crate::clock::parse_iso8601(&env.created_at).unwrap_or(0),
                    sql_ms(env.budget.ttl),
                    env.priority().rank(),
                ])
            })
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// What the index knows of the messages `ids` at `endpoint`, by id
    /// (read inside this transaction).
    pub fn claims(&self, endpoint: &str, ids: &[String]) -> Result<HashMap<String, ClaimRow>> {
        claim_rows(&self.tx, endpoint, ids).map_err(|e| self.err(e))
    }

    /// Marks a message whose lease ran out pending again (indexing it if
    /// the index lacks it), remembering when that lease ran out; the lease
    /// counts as counted, so nothing counts it twice. A row no longer the
    /// claim that was seen (its lease `seen`: claimed anew, or finished,
    /// meanwhile) is left alone.
    pub fn record_redelivered(
        &self,
        endpoint: &str,
        env: &Envelope,
        ran_out: u64,
        seen: Option<u64>,
    ) -> Result<()> {
        self.tx
            .prepare_cached(
                "INSERT INTO messages
                 (endpoint, id, subject, sender, trace_id, status, sent_at, expires_at, priority,
                  lease_until, lease_counted)
                 VALUES (?1, ?2, ?3, ?4, ?5, 'pending', ?6, ?7, ?8, ?9, 1)
                 ON CONFLICT (endpoint, id) DO UPDATE SET
                   status = 'pending', claimed_at = NULL, done_at = NULL, code = NULL,
                   reason = NULL, lease_until = excluded.lease_until, lease_counted = 1, probe = 0
                 WHERE messages.status = 'claimed' AND messages.lease_until IS ?10",
            )
            .and_then(|mut st| {
                st.execute(params![
                    endpoint,
                    env.id,
                    env.subject,
                    env.from,
                    env.trace(),
                    crate::clock::parse_iso8601(&env.created_at).unwrap_or(0),
                    sql_ms(env.budget.ttl),
                    env.priority().rank(),
                    sql_ms(ran_out),
                    seen.map(sql_ms),
                ])
            })
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Retention: deletes finished rows (acked or dead-lettered) older than
    /// `rows_before`, events older than `before`, and idempotency keys
    /// older than `keys_before`. Returns the three counts.
    pub fn prune(
        &self,
        rows_before: u64,
        before: u64,
        keys_before: u64,
    ) -> Result<(usize, usize, usize)> {
        let rows = self
            .tx
            .execute(
                "DELETE FROM messages WHERE status IN ('acked', 'failed')
                 AND COALESCE(done_at, sent_at) < ?1",
                params![rows_before],
            )
            .map_err(|e| self.err(e))?;
        let events = self
            .tx
            .execute("DELETE FROM events WHERE at < ?1", params![before])
            .map_err(|e| self.err(e))?;
        let keys = self
            .tx
            .execute(
                "DELETE FROM idempotency WHERE created_at < ?1",
                params![keys_before],
            )
            .map_err(|e| self.err(e))?;
        Ok((rows, events, keys))
    }

    /// Every (endpoint, id, status) row whose message should be on disk
    /// (pending, claimed or dead-lettered).
    pub fn live_rows(&self) -> Result<Vec<(String, String, Status)>> {
        let mut stmt = self
            .tx
            .prepare("SELECT endpoint, id, status FROM messages WHERE status != 'acked'")
            .map_err(|e| self.err(e))?;
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .and_then(Iterator::collect)
            .map_err(|e| self.err(e))
    }

    /// Sets a row's status to what the Maildir says (`pending`, `claimed`, `failed`).
    pub fn set_status(&self, endpoint: &str, id: &str, status: Status) -> Result<()> {
        self.exec(
            "UPDATE messages SET status = ?3 WHERE endpoint = ?1 AND id = ?2",
            params![endpoint, id, status],
        )?;
        Ok(())
    }

    /// Indexes a message found on disk with the status its directory gives.
    pub fn index_found(
        &mut self,
        endpoint: &str,
        env: &Envelope,
        status: Status,
        failure: Option<(&str, &str)>,
        now: u64,
    ) -> Result<()> {
        if matches!(status, Status::Pending | Status::Claimed) {
            self.mark_prioritized(endpoint, env)?;
        }
        let (code, reason) = failure.unzip();
        let sent_at = crate::clock::parse_iso8601(&env.created_at).unwrap_or(now);
        self.exec(
            "INSERT OR REPLACE INTO messages
                 (endpoint, id, subject, sender, trace_id, status, sent_at, claimed_at, done_at,
                  expires_at, code, reason, priority)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
            params![
                endpoint,
                env.id,
                env.subject,
                env.from,
                env.trace(),
                status.as_str(),
                sent_at,
                (status == Status::Claimed).then_some(now),
                (status == Status::Failed).then_some(now),
                sql_ms(env.budget.ttl),
                code,
                reason,
                env.priority().rank(),
            ],
        )?;
        Ok(())
    }

    /// Deletes a message's index row at an endpoint.
    pub fn forget(&self, endpoint: &str, id: &str) -> Result<()> {
        self.exec(
            "DELETE FROM messages WHERE endpoint = ?1 AND id = ?2",
            params![endpoint, id],
        )?;
        Ok(())
    }

    /// The index row of a message at an endpoint.
    pub fn row(&self, endpoint: &str, id: &str) -> Result<Option<Row>> {
        self.tx
            .query_row(
                "SELECT sender, status, probe FROM messages WHERE endpoint = ?1 AND id = ?2",
                params![endpoint, id],
                |r| {
                    Ok(Row {
                        sender: r.get(0)?,
                        status: r.get(1)?,
                        probe: r.get(2)?,
                    })
                },
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Marks a pending message claimed at `at` without a lease: the claim
    /// happened on another host (`relay bridge`), which holds its lease.
    pub fn record_remote_claim(&self, endpoint: &str, id: &str, at: u64) -> Result<()> {
        self.exec(
            "UPDATE messages SET status = 'claimed', claimed_at = ?3
                 WHERE endpoint = ?1 AND id = ?2 AND status = 'pending'",
            params![endpoint, id, at],
        )?;
        Ok(())
    }

    /// Marks one message acked or failed (no-op if the index lacks it).
    pub fn record_done(
        &self,
        endpoint: &str,
        id: &str,
        status: Status,
        failure: Option<(&str, &str)>,
        now: u64,
    ) -> Result<()> {
        let (code, reason) = failure.unzip();
        self.tx
            .prepare_cached(
                "UPDATE messages SET status = ?3, done_at = ?4, code = ?5, reason = ?6,
                   lease_until = NULL
                 WHERE endpoint = ?1 AND id = ?2",
            )
            .and_then(|mut st| st.execute(params![endpoint, id, status, now, code, reason]))
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Claims whose lease ran out before `now` and were not counted yet
    /// (limited to `endpoint` if given); they are marked counted.
    pub fn expired_leases(&self, endpoint: Option<&str>, now: u64) -> Result<Vec<ExpiredLease>> {
        let mut stmt = self
            .tx
            .prepare_cached(
                "UPDATE messages SET lease_counted = 1
                 WHERE lease_until IS NOT NULL AND lease_counted = 0 AND lease_until < ?1
                   AND status = 'claimed' AND (?2 IS NULL OR endpoint = ?2)
                 RETURNING id, endpoint, sender, probe",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![now, endpoint], |r| {
                Ok(ExpiredLease {
                    id: r.get(0)?,
                    endpoint: r.get(1)?,
                    sender: r.get(2)?,
                    probe: r.get(3)?,
                })
            })
            .and_then(Iterator::collect)
            .map_err(|e| self.err(e))?;
        Ok(rows)
    }

    /// The earliest lease deadline not yet counted, per endpoint (limited to
    /// `endpoint` if given).
    pub fn lease_deadlines(&self, endpoint: Option<&str>) -> Result<BTreeMap<String, u64>> {
        let mut stmt = self
            .tx
            .prepare_cached(
                // Without `INDEXED BY`, `GROUP BY endpoint` makes SQLite
                // walk the primary key: every row of the index.
                "SELECT endpoint, MIN(lease_until) FROM messages INDEXED BY messages_by_lease
                 WHERE lease_until IS NOT NULL AND lease_counted = 0 AND status = 'claimed'
                   AND (?1 IS NULL OR endpoint = ?1)
                 GROUP BY endpoint",
            )
            .map_err(|e| self.err(e))?;
        stmt.query_map(params![endpoint], |r| Ok((r.get(0)?, r.get(1)?)))
            .and_then(Iterator::collect)
            .map_err(|e| self.err(e))
    }

    /// Records idempotency key `key` of `sender` for message `id`, unless it
    /// was used within `window_ms`: then returns the id that used it.
    pub fn claim_key(
        &self,
        sender: &str,
        key: &str,
        id: &str,
        window_ms: u64,
        now: u64,
    ) -> Result<Option<String>> {
        let existing: Option<(String, u64)> = self
            .tx
            .query_row(
                "SELECT message_id, created_at FROM idempotency WHERE sender = ?1 AND key = ?2",
                params![sender, key],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        if let Some((original, at)) = existing
            && now.saturating_sub(at) < window_ms
        {
            return Ok(Some(original));
        }
        self.exec(
            "INSERT OR REPLACE INTO idempotency (sender, key, message_id, created_at)
                 VALUES (?1, ?2, ?3, ?4)",
            params![sender, key, id, now],
        )?;
        Ok(None)
    }

    /// Forgets a key claimed by `id` (its send delivered nothing).
    pub fn release_key(&self, sender: &str, key: &str, id: &str) -> Result<()> {
        self.exec(
            "DELETE FROM idempotency WHERE sender = ?1 AND key = ?2 AND message_id = ?3",
            params![sender, key, id],
        )?;
        Ok(())
    }

    /// Marks a message dead-lettered at `endpoint` with `code` and records
    /// the `dead_letter` event. The one place a dead letter is accounted.
    pub fn dead_lettered(
        &self,
        sender: Option<&str>,
        endpoint: &str,
        id: &str,
        code: Code,
        reason: &str,
        now: u64,
    ) -> Result<()> {
        self.record_done(
            endpoint,
            id,
            Status::Failed,
            Some((code.as_str(), reason)),
            now,
        )?;
        self.event(&Event::dead_letter(sender, endpoint, id, code, reason), now)
    }

    /// Appends an event.
    pub fn event(&self, e: &Event<'_>, now: u64) -> Result<()> {
        let Event {
            kind,
            sender,
            endpoint,
            message_id,
            detail,
        } = e;
        let who = (*sender, *endpoint, *message_id);
        self.insert_event(kind.as_str(), who, detail, now)
    }

    /// Appends an event of `kind` (an outbox's record holds it as text)
    /// about (sender, endpoint, message id).
    fn insert_event(
        &self,
        kind: &str,
        (sender, endpoint, message_id): (Option<&str>, Option<&str>, Option<&str>),
        detail: &serde_json::Value,
        now: u64,
    ) -> Result<()> {
        self.tx
            .prepare_cached(
                "INSERT INTO events (at, kind, sender, endpoint, message_id, detail)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .and_then(|mut st| {
                st.execute(params![
                    now,
                    kind,
                    sender,
                    endpoint,
                    message_id,
                    detail.to_string()
                ])
            })
            .map_err(|e| self.err(e))?;
        Ok(())
    }
}

impl Tx<'_> {
    /// Writes everything in `out` into this transaction, in order (emptying
    /// it): rows as ingestion writes the journal's, events as `event` does.
    pub fn record(&self, out: &mut Outbox) -> Result<()> {
        for r in out.drain() {
            match r {
                Record::Event {
                    kind,
                    sender,
                    endpoint,
                    message_id,
                    detail,
                    at,
                    ..
                } => self.insert_event(
                    &kind,
                    (
                        sender.as_deref(),
                        endpoint.as_deref(),
                        message_id.as_deref(),
                    ),
                    &detail,
                    at,
                )?,
                r => apply(&self.tx, std::iter::once(&r)).map_err(|e| self.err(e))?,
            }
        }
        Ok(())
    }
}

/// Most journal bytes read (and applied) at once.
const INGEST_CHUNK: u64 = 4 << 20;

/// Reads the whole records of the journal `f` (at `path`) from `offset`,
/// at most `max` bytes (`log::parse`), and applies them in `tx`, recording
/// records or lines that could not be (`journal_skipped`), and the offset
/// reached (`at` is the journal's inode and the offset to start from).
/// Returns how many were skipped and the offset reached, or `None` when no
/// whole record is there yet. No send writes a record of `max` bytes: a
/// stretch that long without one (written by something else) is skipped a
/// chunk at a time, so it can neither wedge ingestion nor make the journal
/// grow forever.
fn ingest_chunk(
    tx: &rusqlite::Transaction<'_>,
    f: &mut std::fs::File,
    path: &Path,
    db: &Path,
    (ino, offset): (u64, u64),
    max: u64,
) -> Result<Option<(usize, u64)>> {
    use std::io::{Seek, SeekFrom};
    let mut chunk = Vec::new();
    f.seek(SeekFrom::Start(offset)).ctx("cannot read", path)?;
    std::io::Read::take(&mut *f, max)
        .read_to_end(&mut chunk)
        .ctx("cannot read", path)?;
    // Whole records only: a send may be mid-append at the end.
    let parsed = log::parse(&chunk, log::OnDamage::Skip);
    let (bad, next) = match parsed.used {
        0 if chunk.len() as u64 >= max => (1, offset + max),
        0 => return Ok(None),
        used => (parsed.bad, offset + used as u64),
    };
    apply(tx, parsed.entries.iter().map(|e| &e.record)).map_err(|e| store_err(db, e))?;
    if bad > 0 {
        skipped_event(tx, bad, offset).map_err(|e| store_err(db, e))?;
    }
    set_journal_offset(tx, ino, next).map_err(|e| store_err(db, e))?;
    Ok(Some((bad, next)))
}

/// Records a `journal_skipped` event: `lines` lines from `offset` on could
/// not be ingested (torn, not records, or numbers out of range).
fn skipped_event(
    tx: &rusqlite::Transaction<'_>,
    lines: usize,
    offset: u64,
) -> rusqlite::Result<()> {
    let now = crate::clock::Clock::from_env().now_ms();
    let detail = serde_json::json!({ "lines": lines, "offset": offset });
    tx.prepare_cached("INSERT INTO events (at, kind, detail) VALUES (?1, ?2, ?3)")?
        .execute(params![sql_ms(now), "journal_skipped", detail.to_string()])?;
    Ok(())
}

/// How far into the journal (identified by its inode) the index has read;
/// 0 for another file, or one shorter than the offset (replaced or emptied
/// by hand).
fn journal_offset(tx: &rusqlite::Transaction<'_>, ino: u64, size: u64) -> rusqlite::Result<u64> {
    let stored: Option<(u64, u64)> = tx.query_row(
        "SELECT (SELECT value FROM meta WHERE key = 'journal_ino'),
                    (SELECT value FROM meta WHERE key = 'journal_offset')",
        [],
        |r| Ok(r.get::<_, Option<u64>>(0)?.zip(r.get::<_, Option<u64>>(1)?)),
    )?;
    Ok(match stored {
        Some((i, offset)) if i == ino && offset <= size => offset,
        _ => 0,
    })
}

fn set_journal_offset(
    tx: &rusqlite::Transaction<'_>,
    ino: u64,
    offset: u64,
) -> rusqlite::Result<()> {
    let mut st = tx.prepare_cached("INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)")?;
    st.execute(params!["journal_ino", ino])?;
    st.execute(params!["journal_offset", offset])?;
    Ok(())
}

/// Applies the index records of a log in `tx` (a message and its
/// cancellation are for `batchlog`'s replay); a record the index already
/// has (a replay) changes nothing.
fn apply<'r>(
    tx: &rusqlite::Transaction<'_>,
    records: impl Iterator<Item = &'r Record>,
) -> rusqlite::Result<()> {
    let mut sent = tx.prepare_cached(
        "INSERT INTO messages
         (endpoint, id, subject, sender, trace_id, status, sent_at, done_at, expires_at,
          code, reason, priority, probe)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
         ON CONFLICT (endpoint, id) DO NOTHING",
    )?;
    let mut unsent = tx.prepare_cached(
        "DELETE FROM messages WHERE endpoint = ?1 AND id = ?2 AND status = 'pending'",
    )?;
    let mut event = tx.prepare_cached(
        "INSERT INTO events (at, kind, sender, endpoint, message_id, detail, jkey)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (jkey) DO NOTHING",
    )?;
    // The same upsert as `Tx::record_claimed`, except over a row finished
    // after this claim was made (a journal replayed after the row moved on).
    let mut claimed = tx.prepare_cached(
        "INSERT INTO messages
         (endpoint, id, subject, sender, trace_id, status, sent_at, claimed_at, expires_at,
          priority, lease_until)
         VALUES (?1, ?2, ?3, ?4, ?5, 'claimed', ?6, ?7, ?8, ?9, ?10)
         ON CONFLICT (endpoint, id) DO UPDATE
         SET status = 'claimed', claimed_at = excluded.claimed_at, done_at = NULL,
             lease_until = excluded.lease_until, lease_counted = 0
         WHERE messages.done_at IS NULL OR messages.done_at <= excluded.claimed_at",
    )?;
    // `Tx::record_done` of an ack.
    let mut acked = tx.prepare_cached(
        "UPDATE messages SET status = 'acked', done_at = ?3, code = NULL, reason = NULL,
           lease_until = NULL
         WHERE endpoint = ?1 AND id = ?2",
    )?;
    for r in records {
        match r {
            Record::Claimed {
                at,
                endpoint,
                id,
                subject,
                sender,
                trace_id,
                sent_at,
                expires_at,
                priority,
                lease_until,
            } => {
                claimed.execute(params![
                    endpoint,
                    id,
                    subject,
                    sender,
                    trace_id,
                    sent_at,
                    at,
                    sql_ms(*expires_at),
                    priority,
                    lease_until,
                ])?;
            }
            Record::Acked { at, endpoint, id } => {
                acked.execute(params![endpoint, id, at])?;
            }
            Record::Sent {
                at,
                endpoint,
                id,
                subject,
                sender,
                trace_id,
                expires_at,
                priority,
                probe,
                code,
                reason,
            } => {
                let failed = code.is_some();
                let status = if failed {
                    Status::Failed
                } else {
                    Status::Pending
                };
                sent.execute(params![
                    endpoint,
                    id,
                    subject,
                    sender,
                    trace_id,
                    status.as_str(),
                    at,
                    failed.then_some(at),
                    sql_ms(*expires_at),
                    code,
                    reason,
                    priority,
                    probe,
                ])?;
            }
            Record::Unsent { endpoint, id } => {
                unsent.execute(params![endpoint, id])?;
            }
            Record::Message { .. } | Record::Cancel { .. } => {}
            Record::Event {
                key,
                at,
                kind,
                sender,
                endpoint,
                message_id,
                detail,
            } => {
                event.execute(params![
                    at,
                    kind,
                    sender,
                    endpoint,
                    message_id,
                    detail.to_string(),
                    key
                ])?;
            }
        }
    }
    Ok(())
}

/// Reads an event row (`id, at, kind, sender, endpoint, message_id, detail`).
pub fn event_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<EventRow> {
    let detail: String = r.get(6)?;
    Ok(EventRow {
        id: r.get(0)?,
        at: r.get(1)?,
        kind: r.get(2)?,
        sender: r.get(3)?,
        endpoint: r.get(4)?,
        message_id: r.get(5)?,
        detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::Null),
    })
}

/// A time in ms as SQLite stores it: foreign envelopes may carry any u64
/// (a TTL of u64::MAX means "never"), SQLite integers stop at i64::MAX.
fn sql_ms(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Whether SQLite reported the database busy or locked (another
/// connection holds the lock).
fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(e, _) if matches!(
        e.code,
        rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
    ))
}

/// Retries `f` while SQLite reports the database busy or locked, for up to
/// the lock timeout (the same patience as the busy handler).
fn retry_busy<T>(mut f: impl FnMut() -> rusqlite::Result<T>) -> rusqlite::Result<T> {
    let deadline = std::time::Instant::now() + crate::lockwait::timeout();
    loop {
        match f() {
            Err(e) if is_busy(&e) && std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            other => return other,
        }
    }
}

/// The one mapping of SQLite errors: busy past the lock timeout is a lock
/// timeout (75, naming the holder of the write lock if known), a file that
/// is not a database or is corrupt is damage (the only thing `doctor
/// --repair` sets aside), anything else (a full disk, an I/O error) is an
/// index failure (74) that leaves the file as it is.
fn store_err(path: &Path, source: rusqlite::Error) -> Error {
    use rusqlite::ErrorCode::{DatabaseCorrupt, NotADatabase};
    if is_busy(&source) {
        return crate::lockwait::timed_out("the index", path, index_writer(path));
    }
    let msg = format!("index {}: {source}", path.display());
    if source.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull) {
        return Error::full(msg);
    }
    match &source {
        rusqlite::Error::SqliteFailure(e, _)
            if matches!(e.code, NotADatabase | DatabaseCorrupt) =>
        {
            Error::Damaged(msg)
        }
        _ => Error::Store(msg),
    }
}

/// The pid holding the index's write lock, if the kernel tells: in WAL
/// mode a POSIX lock on byte 120 of `relay.db-shm`; otherwise a write lock
/// on `relay.db` itself.
fn index_writer(path: &Path) -> Option<u32> {
    use crate::lockwait::{Kind, holder};
    let shm = PathBuf::from(format!("{}-shm", path.display()));
    let on = |p: &Path, byte| {
        std::fs::metadata(p)
            .ok()
            .and_then(|m| holder(&m, Kind::PosixByte(byte)))
    };
    // The reserved lock of rollback mode sits just past the pending byte.
    on(&shm, 120).or_else(|| on(path, (1 << 30) + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `without_waiting` skips only the index's write lock held by another
    /// connection; a lock timeout of anything else `f` waits for (here the
    /// state lock's, as `lockwait` makes it) is the error it is.
    #[test]
    fn without_waiting_skips_only_the_index_write_lock() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("relay.db");
        let mut store = Store::open(&path).expect("open");
        let other = Connection::open(&path).expect("second connection");
        other
            .execute_batch("BEGIN IMMEDIATE")
            .expect("hold the write lock");
        let held = store.without_waiting(|s| s.begin().map(|_| ()));
        assert!(matches!(held, Ok(None)), "{held:?}");
        drop(other);
        let free = store.without_waiting(|s| s.begin().map(|_| ()));
        assert!(matches!(free, Ok(Some(()))), "{free:?}");
        let state = dir.path().join("state.0");
        let stuck = store.without_waiting(|s| {
            let _tx = s.begin()?;
            Err::<(), _>(crate::lockwait::timed_out("the state lock", &state, None))
        });
        match stuck {
            Err(e @ Error::Locked(_)) => {
                assert_eq!(e.exit_code(), crate::error::code::TEMPFAIL);
                assert!(e.to_string().contains("the state lock"), "{e}");
            }
            other => panic!("a state lock timeout was not reported: {other:?}"),
        }
    }
}
