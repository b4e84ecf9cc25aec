//! The bridge's own state, `<home>/bridge/bridge.db` (SQLite, WAL; written
//! only by the bridge of this home): the (id, endpoint) pairs applied from
//! the stream, so a redelivery after the dedup window is delivered once;
//! the pairs of a batch being applied (committed before its delivery, so a
//! crash between the delivery and its record is recognised, and only such
//! a pair, or a redelivery, costs a look at the Maildir and the index);
//! what was last reported back to their origin; the last id received from
//! each peer. The messages themselves live in the Maildir, never here.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};

use crate::bridge::wire::SpanState;
use crate::error::{Error, Result};

/// The schema, created on open (no migrations yet: version 1).
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS applied (
    endpoint TEXT NOT NULL,
    id TEXT NOT NULL,
    origin TEXT NOT NULL,
    reported TEXT NOT NULL,
    at INTEGER NOT NULL,
    PRIMARY KEY (endpoint, id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS applied_open ON applied (reported) WHERE reported NOT IN ('acked', 'failed');
CREATE TABLE IF NOT EXISTS applying (
    endpoint TEXT NOT NULL,
    id TEXT NOT NULL,
    PRIMARY KEY (endpoint, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS peers (
    host TEXT PRIMARY KEY,
    last_id TEXT NOT NULL,
    at INTEGER NOT NULL
) WITHOUT ROWID;
PRAGMA user_version = 1;
";

/// How long applied pairs are remembered (a redelivery later than this
/// after its first delivery would be delivered again).
pub const APPLIED_KEEP_MS: u64 = 7 * 24 * 3_600_000;

/// The directory of the bridge's files in a home.
#[must_use]
pub fn dir(home_root: &Path) -> PathBuf {
    home_root.join("bridge")
}

/// An applied pair still open: its origin has not heard its final state.
#[derive(Debug, Clone)]
pub struct Open {
    /// The endpoint here.
    pub endpoint: String,
    /// The message.
    pub id: String,
    /// The host that sent it.
    pub origin: String,
    /// What the origin last heard.
    pub reported: SpanState,
}

/// The open bridge database.
pub struct State {
    conn: Connection,
    path: PathBuf,
}

impl State {
    /// Opens (creating) `<home>/bridge/bridge.db`.
    pub fn open(home_root: &Path) -> Result<Self> {
        let d = dir(home_root);
        crate::home::create_dir_secure(&d, false)?;
        let path = d.join("bridge.db");
        let conn = Connection::open(&path).map_err(|e| db_err(&path, &e))?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .and_then(|()| conn.pragma_update(None, "journal_mode", "WAL"))
            .and_then(|()| conn.pragma_update(None, "synchronous", "FULL"))
            .and_then(|()| conn.execute_batch(SCHEMA))
            .map_err(|e| db_err(&path, &e))?;
        Ok(State { conn, path })
    }

    fn err(&self, e: &rusqlite::Error) -> Error {
        db_err(&self.path, e)
    }

    /// Begins a transaction: what follows commits at once, with one fsync.
    pub fn begin(&self) -> Result<()> {
        self.conn
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(|e| self.err(&e))
    }

    /// Commits what `begin` began.
    pub fn commit(&self) -> Result<()> {
        self.conn.execute_batch("COMMIT").map_err(|e| self.err(&e))
    }

    /// Gives up what `begin` began.
    pub fn rollback(&self) {
        let _ = self.conn.execute_batch("ROLLBACK");
    }

    /// Runs `f` in one transaction, so what it writes costs one fsync:
    /// committed if `f` succeeds, given up if it fails.
    pub fn atomically<T>(&self, f: impl FnOnce(&Self) -> Result<T>) -> Result<T> {
        self.begin()?;
        match f(self) {
            Ok(v) => self.commit().map(|()| v),
            Err(e) => {
                self.rollback();
                Err(e)
            }
        }
    }

    /// Whether (endpoint, id) was applied.
    pub fn is_applied(&self, endpoint: &str, id: &str) -> Result<bool> {
        self.has(
            "SELECT 1 FROM applied WHERE endpoint = ?1 AND id = ?2",
            endpoint,
            id,
        )
    }

    /// Whether `sql` (a `SELECT 1` of a pair) finds (endpoint, id).
    fn has(&self, sql: &str, endpoint: &str, id: &str) -> Result<bool> {
        self.conn
            .prepare_cached(sql)
            .and_then(|mut st| st.query_row(params![endpoint, id], |_| Ok(())).optional())
            .map(|r| r.is_some())
            .map_err(|e| self.err(&e))
    }

    /// Whether (endpoint, id) was being applied when a bridge stopped
    /// short of recording it (it may be delivered already).
    pub fn is_applying(&self, endpoint: &str, id: &str) -> Result<bool> {
        self.has(
            "SELECT 1 FROM applying WHERE endpoint = ?1 AND id = ?2",
            endpoint,
            id,
        )
    }

    /// Records that (endpoint, id) is about to be delivered: what
    /// `mark_applied` of the pair then clears.
    pub fn mark_applying(&self, endpoint: &str, id: &str) -> Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO applying (endpoint, id) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
            )
            .and_then(|mut st| st.execute(params![endpoint, id]))
            .map_err(|e| self.err(&e))?;
        Ok(())
    }

    /// Forgets that (endpoint, id) was being applied: it was refused for
    /// now, so nothing of it is here.
    pub fn clear_applying(&self, endpoint: &str, id: &str) -> Result<()> {
        self.conn
            .prepare_cached("DELETE FROM applying WHERE endpoint = ?1 AND id = ?2")
            .and_then(|mut st| st.execute(params![endpoint, id]))
            .map_err(|e| self.err(&e))?;
        Ok(())
    }

    /// Records (endpoint, id) applied from `origin`, reported as `reported`.
    pub fn mark_applied(
        &self,
        endpoint: &str,
        id: &str,
        origin: &str,
        reported: SpanState,
        now: u64,
    ) -> Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO applied (endpoint, id, origin, reported, at) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (endpoint, id) DO NOTHING")
            .and_then(|mut st| st.execute(params![endpoint, id, origin, reported.as_str(), now]))
            .map_err(|e| self.err(&e))?;
        self.clear_applying(endpoint, id)
    }

    /// Records what the origin of (endpoint, id) heard last, unless it heard
    /// of a later state already (a claim reported before the delivery).
    pub fn set_reported(&self, endpoint: &str, id: &str, reported: SpanState) -> Result<()> {
        self.conn
            .prepare_cached(
                "UPDATE applied SET reported = ?3 WHERE endpoint = ?1 AND id = ?2
                 AND (CASE reported WHEN 'retrying' THEN 0 WHEN 'delivered' THEN 1
                      WHEN 'claimed' THEN 2 ELSE 3 END) < ?4",
            )
            .and_then(|mut st| {
                st.execute(params![endpoint, id, reported.as_str(), reported.rank()])
            })
            .map_err(|e| self.err(&e))?;
        Ok(())
    }

    /// Applied pairs whose origin has not heard the final state, oldest
    /// first, from the `offset`-th.
    pub fn open_pairs(&self, limit: usize, offset: usize) -> Result<Vec<Open>> {
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT endpoint, id, origin, reported FROM applied
                 WHERE reported NOT IN ('acked', 'failed') ORDER BY at, endpoint, id
                 LIMIT ?1 OFFSET ?2",
            )
            .map_err(|e| self.err(&e))?;
        let rows = st
            .query_map(
                params![
                    i64::try_from(limit).unwrap_or(i64::MAX),
                    i64::try_from(offset).unwrap_or(i64::MAX)
                ],
                |r| {
                    let reported: String = r.get(3)?;
                    Ok(Open {
                        endpoint: r.get(0)?,
                        id: r.get(1)?,
                        origin: r.get(2)?,
                        reported: SpanState::parse(&reported).unwrap_or(SpanState::Delivered),
                    })
                },
            )
            .and_then(Iterator::collect)
            .map_err(|e| self.err(&e))?;
        Ok(rows)
    }

    /// The pair (endpoint, id) if it is applied and still open.
    pub fn open_pair(&self, endpoint: &str, id: &str) -> Result<Option<Open>> {
        self.conn
            .prepare_cached(
                "SELECT origin, reported FROM applied
                 WHERE endpoint = ?1 AND id = ?2 AND reported NOT IN ('acked', 'failed')",
            )
            .and_then(|mut st| {
                st.query_row(params![endpoint, id], |r| {
                    let reported: String = r.get(1)?;
                    Ok(Open {
                        endpoint: endpoint.to_string(),
                        id: id.to_string(),
                        origin: r.get(0)?,
                        reported: SpanState::parse(&reported).unwrap_or(SpanState::Delivered),
                    })
                })
                .optional()
            })
            .map_err(|e| self.err(&e))
    }

    /// Forgets applied pairs older than `before`; returns how many.
    pub fn prune(&self, before: u64) -> Result<usize> {
        self.conn
            .execute(
                "DELETE FROM applied WHERE at < ?1 AND reported IN ('acked', 'failed')",
                params![before],
            )
            .map_err(|e| self.err(&e))
    }

    /// Records the last message id received from `host`.
    pub fn set_peer(&self, host: &str, id: &str, now: u64) -> Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO peers (host, last_id, at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (host) DO UPDATE SET last_id = excluded.last_id, at = excluded.at
                 WHERE excluded.last_id > peers.last_id",
            )
            .and_then(|mut st| st.execute(params![host, id, now]))
            .map_err(|e| self.err(&e))?;
        Ok(())
    }

    /// The last id received from each peer: (host, id, when).
    pub fn peers(&self) -> Result<Vec<(String, String, u64)>> {
        let mut st = self
            .conn
            .prepare_cached("SELECT host, last_id, at FROM peers ORDER BY host")
            .map_err(|e| self.err(&e))?;
        st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .and_then(Iterator::collect)
            .map_err(|e| self.err(&e))
    }
}

fn db_err(path: &Path, e: &rusqlite::Error) -> Error {
    Error::Store(format!("bridge state {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applied_pairs_are_remembered_and_reported() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let st = State::open(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        assert!(!st.is_applied("a.b", "01X").unwrap_or(true));
        st.mark_applied("a.b", "01X", "hosta", SpanState::Delivered, 5)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(st.is_applied("a.b", "01X").unwrap_or(false));
        assert_eq!(st.open_pairs(10, 0).map(|v| v.len()).unwrap_or(0), 1);
        st.set_reported("a.b", "01X", SpanState::Acked)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(st.open_pairs(10, 0).map(|v| v.len()).unwrap_or(9), 0);
        st.set_peer("hosta", "01B", 1)
            .unwrap_or_else(|e| panic!("{e}"));
        st.set_peer("hosta", "01A", 2)
            .unwrap_or_else(|e| panic!("{e}"));
        let peers = st.peers().unwrap_or_default();
        assert_eq!(peers, vec![("hosta".into(), "01B".into(), 1)]);
    }

    #[test]
    fn a_pair_is_applying_from_before_its_delivery_until_it_is_recorded_or_refused() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let st = State::open(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        let ok = |r: Result<()>| r.unwrap_or_else(|e| panic!("{e}"));
        ok(st.atomically(|st| st.mark_applying("a.b", "01X")));
        ok(st.atomically(|st| st.mark_applying("a.b", "01Y")));
        // A bridge that stopped here leaves both, across a reopen.
        drop(st);
        let st = State::open(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        assert!(st.is_applying("a.b", "01X").unwrap_or(false));
        ok(st.mark_applied("a.b", "01X", "hosta", SpanState::Retrying, 5));
        assert!(!st.is_applying("a.b", "01X").unwrap_or(true));
        ok(st.clear_applying("a.b", "01Y"));
        assert!(!st.is_applying("a.b", "01Y").unwrap_or(true));
    }

    #[test]
    fn what_an_origin_heard_only_moves_on() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let st = State::open(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        let ok = |r: Result<()>| r.unwrap_or_else(|e| panic!("{e}"));
        ok(st.mark_applied("a.b", "01X", "hosta", SpanState::Retrying, 5));
        // A claim told before the delivery it follows.
        ok(st.set_reported("a.b", "01X", SpanState::Claimed));
        ok(st.set_reported("a.b", "01X", SpanState::Delivered));
        let open = st.open_pair("a.b", "01X").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(open.map(|o| o.reported), Some(SpanState::Claimed));
        ok(st.set_reported("a.b", "01X", SpanState::Acked));
        ok(st.set_reported("a.b", "01X", SpanState::Failed));
        assert!(st.open_pair("a.b", "01X").unwrap_or_default().is_none());
        assert_eq!(st.open_pairs(10, 0).map(|v| v.len()).unwrap_or(9), 0);
    }
}
