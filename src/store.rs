//! The SQLite index (`relay.db`): the only file that contains SQL.
//!
//! One row per (message, endpoint) with status and timestamps. The Maildir
//! stays the source of truth; the index may lag it (a crash between the
//! rename and the insert) and is completed when the message is next seen.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::envelope::Envelope;
use crate::error::{Error, IoContext, Result};
use crate::home::FILE_MODE;

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
];

/// Lifecycle status of a (message, endpoint) row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// In `new/`.
    Pending,
    /// In `cur/`.
    Claimed,
    /// Acknowledged and removed.
    Acked,
    /// Dead-lettered in `failed/`.
    Failed,
}

impl Status {
    /// The stored name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Claimed => "claimed",
            Status::Acked => "acked",
            Status::Failed => "failed",
        }
    }
}

/// An open index.
pub struct Store {
    conn: Connection,
    path: PathBuf,
}

impl Store {
    /// Opens (creating with mode 0600) and migrates the index.
    pub fn open(path: &Path) -> Result<Self> {
        if !path.exists() {
            OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(FILE_MODE)
                .open(path)
                .ctx("cannot create index", path)?;
        }
        let conn = Connection::open(path).map_err(|e| store_err(path, e))?;
        let mut store = Store {
            conn,
            path: path.to_path_buf(),
        };
        store.init().map_err(|e| match e {
            Error::Store(msg) => Error::Store(format!(
                "{msg}; if the file is damaged, move it aside (mv {p} {p}.bad): relay starts a fresh index and the mailboxes keep every message",
                p = path.display()
            )),
            other => other,
        })?;
        Ok(store)
    }

    fn init(&mut self) -> Result<()> {
        self.conn
            .busy_timeout(Duration::from_secs(10))
            .map_err(|e| self.err(e))?;
        // WAL is persistent in the file; synchronous=NORMAL is per connection.
        // The index is not the source of truth, so it need not fsync on commit.
        self.conn
            .execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;")
            .map_err(|e| self.err(e))?;
        let version: usize = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        if version < MIGRATIONS.len() {
            self.migrate().map_err(|e| self.err(e))?;
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

    /// Records deliveries (status `pending`) and direct dead letters
    /// (`failed`, with code and reason) of one send, in one transaction.
    pub fn record_sent(&mut self, rows: &[SentRow<'_>], now: u64) -> Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| store_err(&self.path, e))?;
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO messages
                     (endpoint, id, subject, sender, trace_id, status, sent_at, done_at, expires_at, code, reason)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                )
                .map_err(|e| store_err(&self.path, e))?;
            for r in rows {
                let failed = r.failure.is_some();
                let (code, reason) = r.failure.unzip();
                stmt.execute(params![
                    r.endpoint,
                    r.envelope.id,
                    r.envelope.subject,
                    r.envelope.from,
                    r.envelope.trace(),
                    if failed {
                        Status::Failed
                    } else {
                        Status::Pending
                    }
                    .as_str(),
                    now,
                    failed.then_some(now),
                    r.envelope.budget.ttl,
                    code,
                    reason,
                ])
                .map_err(|e| store_err(&self.path, e))?;
            }
        }
        tx.commit().map_err(|e| store_err(&self.path, e))
    }

    /// Marks messages claimed; a message the index lacks (dropped into
    /// `new/` by another program) gets its row now.
    pub fn record_claimed(&mut self, endpoint: &str, envs: &[&Envelope], now: u64) -> Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| store_err(&self.path, e))?;
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT INTO messages
                     (endpoint, id, subject, sender, trace_id, status, sent_at, claimed_at, expires_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, 'claimed', ?6, ?6, ?7)
                     ON CONFLICT (endpoint, id) DO UPDATE
                     SET status = 'claimed', claimed_at = excluded.claimed_at, done_at = NULL",
                )
                .map_err(|e| store_err(&self.path, e))?;
            for env in envs {
                let sent_at = crate::clock::parse_iso8601(&env.created_at).unwrap_or(now);
                stmt.execute(params![
                    endpoint,
                    env.id,
                    env.subject,
                    env.from,
                    env.trace(),
                    sent_at.min(now),
                    env.budget.ttl,
                ])
                .map_err(|e| store_err(&self.path, e))?;
            }
        }
        tx.commit().map_err(|e| store_err(&self.path, e))
    }

    /// Marks messages acked or failed. Rows the index lacks are left alone:
    /// the Maildir already tells the truth about them.
    pub fn record_done(
        &mut self,
        endpoint: &str,
        ids: &[&str],
        status: Status,
        code: Option<&str>,
        reason: Option<&str>,
        now: u64,
    ) -> Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| store_err(&self.path, e))?;
        {
            let mut stmt = tx
                .prepare_cached(
                    "UPDATE messages SET status = ?3, done_at = ?4, code = ?5, reason = ?6
                     WHERE endpoint = ?1 AND id = ?2",
                )
                .map_err(|e| store_err(&self.path, e))?;
            for id in ids {
                stmt.execute(params![endpoint, id, status.as_str(), now, code, reason])
                    .map_err(|e| store_err(&self.path, e))?;
            }
        }
        tx.commit().map_err(|e| store_err(&self.path, e))
    }

    /// The indexed status of a message at an endpoint, if indexed.
    pub fn status(&self, endpoint: &str, id: &str) -> Result<Option<String>> {
        self.conn
            .query_row(
                "SELECT status FROM messages WHERE endpoint = ?1 AND id = ?2",
                params![endpoint, id],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))
    }
}

/// One row of a send: delivered (`failure` None) or dead-lettered.
pub struct SentRow<'a> {
    /// Mailbox directory name.
    pub endpoint: &'a str,
    /// The envelope as written.
    pub envelope: &'a Envelope,
    /// `(code, reason)` when dead-lettered.
    pub failure: Option<(&'a str, &'a str)>,
}

fn store_err(path: &Path, source: rusqlite::Error) -> Error {
    Error::Store(format!("index {}: {source}", path.display()))
}
