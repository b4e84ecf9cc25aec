//! Coexistence with DorkOS on one home (issue 13): relay keeps DorkOS's
//! index (`dork.db` beside the home, `index.db` in it) in step, accepts and
//! rejects config and access rules as DorkOS's validation does, and
//! `doctor` leaves DorkOS's files alone. DorkOS's schema is created here
//! from the contract's description (dorkos-http.md section 7.3).

mod doctor; // doctor on a DorkOS home: its files are not problems, nothing repaired away
mod index; // the rows and spans of relay's sends, acks, nacks, dead letters; busy DorkOS; backpressure
mod validation; // config.json and access-rules.json: DorkOS-valid accepted, DorkOS-invalid refused

use std::path::{Path, PathBuf};

use rusqlite::Connection;

use crate::harness::Relay;

/// DorkOS's tables relay touches, as its migrations leave them
/// (`relay_index` after 0000/0006/0024/0054, `relay_traces` after
/// 0000/0043, the migrator's journal).
pub const DDL: &str = "
PRAGMA journal_mode = WAL;
CREATE TABLE __drizzle_migrations (id INTEGER PRIMARY KEY, hash text NOT NULL, created_at numeric);
INSERT INTO __drizzle_migrations (hash, created_at) VALUES ('0072', 1787383865514);
CREATE TABLE relay_index (
  id TEXT NOT NULL,
  subject TEXT NOT NULL,
  endpoint_hash TEXT NOT NULL,
  status TEXT NOT NULL DEFAULT 'pending',
  expires_at TEXT,
  sender TEXT,
  payload TEXT,
  metadata TEXT,
  created_at TEXT NOT NULL,
  PRIMARY KEY (id, endpoint_hash)
);
CREATE INDEX idx_relay_index_sender_created_at ON relay_index (sender, created_at DESC);
CREATE TABLE relay_traces (
  id TEXT PRIMARY KEY NOT NULL,
  message_id TEXT NOT NULL UNIQUE,
  trace_id TEXT NOT NULL,
  subject TEXT NOT NULL,
  status TEXT NOT NULL,
  kind TEXT NOT NULL DEFAULT 'delivery',
  sent_at TEXT NOT NULL,
  delivered_at TEXT,
  processed_at TEXT,
  error_message TEXT,
  metadata TEXT
);
";

/// `<scratch>/dork.db`: a DorkOS server's index, one level above the home.
pub fn server_db(r: &Relay) -> PathBuf {
    r.scratch().join("dork.db")
}

/// Creates DorkOS's schema in `path` (as DorkOS's migrator would).
#[track_caller]
pub fn create(path: &Path) -> Connection {
    let conn = Connection::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    conn.execute_batch(DDL)
        .unwrap_or_else(|e| panic!("schema in {}: {e}", path.display()));
    conn
}

/// A world whose home a DorkOS server shares: the home exists (as DorkOS
/// makes it, default modes) and `dork.db` is beside it.
pub fn server_world() -> (Relay, Connection) {
    let r = Relay::new();
    std::fs::create_dir_all(r.home()).unwrap_or_else(|e| panic!("mkdir home: {e}"));
    let conn = create(&server_db(&r));
    (r, conn)
}

/// One `relay_index` row as DorkOS reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexRow {
    pub id: String,
    pub subject: String,
    pub endpoint_hash: String,
    pub status: String,
    pub expires_at: Option<String>,
    pub sender: Option<String>,
    pub payload: Option<String>,
    pub metadata: Option<String>,
    pub created_at: String,
}

/// Every `relay_index` row, by (id, endpoint_hash).
pub fn rows(conn: &Connection) -> Vec<IndexRow> {
    let mut stmt = conn
        .prepare(
            "SELECT id, subject, endpoint_hash, status, expires_at, sender, payload, metadata, created_at \
             FROM relay_index ORDER BY id, endpoint_hash",
        )
        .unwrap_or_else(|e| panic!("select: {e}"));
    stmt.query_map([], |r| {
        Ok(IndexRow {
            id: r.get(0)?,
            subject: r.get(1)?,
            endpoint_hash: r.get(2)?,
            status: r.get(3)?,
            expires_at: r.get(4)?,
            sender: r.get(5)?,
            payload: r.get(6)?,
            metadata: r.get(7)?,
            created_at: r.get(8)?,
        })
    })
    .unwrap_or_else(|e| panic!("query: {e}"))
    .map(|r| r.unwrap_or_else(|e| panic!("row: {e}")))
    .collect()
}

/// (endpoint_hash, status) of message `id`'s rows.
pub fn statuses(conn: &Connection, id: &str) -> Vec<(String, String)> {
    rows(conn)
        .into_iter()
        .filter(|r| r.id == id)
        .map(|r| (r.endpoint_hash, r.status))
        .collect()
}

/// What DorkOS's backpressure counts for an endpoint (dorkos-http.md 7.5,
/// `countNewByEndpoint`, `relay/sqlite-index.ts:273-280`): the statement
/// Drizzle renders for it, with its two parameters.
pub fn dorkos_pending(conn: &Connection, endpoint: &str) -> i64 {
    conn.query_row(
        r#"select count(*) from "relay_index" where ("relay_index"."endpoint_hash" = ? and "relay_index"."status" = ?)"#,
        [endpoint, "pending"],
        |r| r.get(0),
    )
    .unwrap_or_else(|e| panic!("count: {e}"))
}
