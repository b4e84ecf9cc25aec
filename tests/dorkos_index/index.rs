//! The rows and spans relay writes into DorkOS's index, operation by
//! operation (dorkos-http.md 7.4/7.6), and what happens when DorkOS is
//! busy, absent, or the file is not DorkOS's.

use rusqlite::Connection;
use serde_json::Value;

use super::{IndexRow, create, dorkos_pending, rows, server_db, server_world, statuses};
use crate::harness::{Relay, T, dorkos_envelope};

/// `Date.toISOString()` of ms since the epoch 2026-01-01 (the pinned clock).
fn iso(offset_ms: u64) -> String {
    let ms = offset_ms % 1000;
    let secs = offset_ms / 1000;
    format!(
        "2026-01-01T{:02}:{:02}:{:02}.{ms:03}Z",
        secs / 3600,
        (secs % 3600) / 60,
        secs % 60
    )
}

/// The one span of message `id` as DorkOS reads it, as JSON.
fn span(conn: &Connection, id: &str) -> Value {
    conn.query_row(
        "SELECT id, message_id, trace_id, subject, status, kind, sent_at, delivered_at, processed_at, error_message, metadata \
         FROM relay_traces WHERE message_id = ?1",
        [id],
        |r| {
            Ok(serde_json::json!({
                "id": r.get::<_, String>(0)?,
                "messageId": r.get::<_, String>(1)?,
                "traceId": r.get::<_, String>(2)?,
                "subject": r.get::<_, String>(3)?,
                "status": r.get::<_, String>(4)?,
                "kind": r.get::<_, String>(5)?,
                "sentAt": r.get::<_, String>(6)?,
                "deliveredAt": r.get::<_, Option<String>>(7)?,
                "processedAt": r.get::<_, Option<String>>(8)?,
                "errorMessage": r.get::<_, Option<String>>(9)?,
                "metadata": r.get::<_, Option<String>>(10)?,
            }))
        },
    )
    .unwrap_or_else(|e| panic!("span of {id}: {e}"))
}

#[test]
fn a_relay_send_appears_in_dorkos_index_exactly_as_dorkos_publish_writes_it() {
    let (r, conn) = server_world();
    r.add(&["relay.agent.a"]);
    let id = r
        .cmd([
            "send",
            "relay.agent.a",
            r#"{"content":"hi"}"#,
            "--from",
            "relay.agent.s",
            "--ttl",
            "30s",
        ])
        .at(T)
        .success()
        .id();
    // The accounting row (DorkOS's rate limiter counts it) and the copy's
    // row (its inbox and backpressure count it), field by field.
    let created = iso(0);
    let expires = Some(iso(30_000));
    assert_eq!(
        rows(&conn),
        vec![
            IndexRow {
                id: id.clone(),
                subject: "relay.agent.a".into(),
                endpoint_hash: "*".into(),
                status: "delivered".into(),
                expires_at: expires.clone(),
                sender: Some("relay.agent.s".into()),
                payload: None,
                metadata: None,
                created_at: created.clone(),
            },
            IndexRow {
                id: id.clone(),
                subject: "relay.agent.a".into(),
                endpoint_hash: "relay.agent.a".into(),
                status: "pending".into(),
                expires_at: expires,
                sender: None,
                payload: None,
                metadata: None,
                created_at: created.clone(),
            },
        ]
    );
    // The file DorkOS's inbox joins to the row: the hop-updated budget, no
    // dispatchId without a trace id of the caller's.
    let env = r.read_json(&format!("mailboxes/relay.agent.a/new/{id}.json"));
    assert_eq!(env["createdAt"], created.as_str());
    assert_eq!(env["from"], "relay.agent.s");
    assert_eq!(
        env["budget"],
        serde_json::json!({"hopCount": 1, "maxHops": 5, "ancestorChain": ["relay.agent.a"],
                           "ttl": T + 30_000, "callBudgetRemaining": 9})
    );
    assert!(env.get("dispatchId").is_none(), "{env}");
    // One span, as DorkOS's server records one per publish.
    let s = span(&conn, &id);
    assert!(s["id"].as_str().is_some_and(crate::harness::is_ulid), "{s}");
    assert_ne!(s["id"], id.as_str(), "a fresh span id");
    let want = serde_json::json!({
        "id": s["id"], "messageId": id, "traceId": id, "subject": "relay.agent.a",
        "status": "delivered", "kind": "delivery", "sentAt": created, "deliveredAt": created,
        "processedAt": null, "errorMessage": null, "metadata": s["metadata"],
    });
    assert_eq!(s, want);
    let meta: Value = serde_json::from_str(s["metadata"].as_str().unwrap_or_default())
        .unwrap_or_else(|e| panic!("metadata is a JSON string: {e}: {s}"));
    assert_eq!(meta["deliveredTo"], 1, "{meta}");
    assert_eq!(meta["rejectedCount"], 0, "{meta}");
    assert_eq!(meta["hasAdapterResult"], false, "{meta}");
    assert!(meta["durationMs"].is_u64(), "{meta}");
    // The journal mode stays DorkOS's.
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap_or_default();
    assert_eq!(mode, "wal");
}

#[test]
fn trace_id_is_written_as_dispatch_id() {
    let (r, conn) = server_world();
    r.add(&["relay.agent.a"]);
    let id = r
        .cmd(["send", "relay.agent.a", "hi", "--trace-id", "ci-run-42"])
        .at(T)
        .success()
        .id();
    let env = r.read_json(&format!("mailboxes/relay.agent.a/new/{id}.json"));
    assert_eq!(env["dispatchId"], "ci-run-42", "{env}");
    assert_eq!(span(&conn, &id)["traceId"], "ci-run-42");
    let id = r
        .cmd(["send", "relay.agent.a", "hi"])
        .env("RELAY_TRACE_ID", "from-hook")
        .at(T)
        .success()
        .id();
    let env = r.read_json(&format!("mailboxes/relay.agent.a/new/{id}.json"));
    assert_eq!(env["dispatchId"], "from-hook", "{env}");
}

#[test]
fn claim_keeps_pending_ack_delivers_nack_fails() {
    let (r, conn) = server_world();
    r.add(&["relay.agent.a"]);
    let a = r.cmd(["send", "relay.agent.a", "1"]).at(T).success().id();
    let b = r.cmd(["send", "relay.agent.a", "2"]).at(T).success().id();
    r.cmd(["recv", "relay.agent.a", "-n", "2"]).at(T).success();
    assert_eq!(
        dorkos_pending(&conn, "relay.agent.a"),
        2,
        "claimed stays pending"
    );
    r.cmd(["ack", "relay.agent.a", &a]).at(T).success();
    r.cmd(["nack", "relay.agent.a", &b, "--reason", "boom"])
        .at(T)
        .success();
    assert_eq!(
        statuses(&conn, &a),
        [
            ("*".into(), "delivered".into()),
            ("relay.agent.a".into(), "delivered".into())
        ]
    );
    assert_eq!(
        statuses(&conn, &b),
        [
            ("*".into(), "delivered".into()),
            ("relay.agent.a".into(), "failed".into())
        ]
    );
    // A requeued dead letter is pending again; a purged one has no row.
    r.cmd(["dlq", "requeue", &b, "--endpoint", "relay.agent.a"])
        .at(T)
        .success();
    assert_eq!(statuses(&conn, &b)[1].1, "pending");
    r.cmd(["recv", "relay.agent.a"]).at(T).success();
    r.cmd(["nack", "relay.agent.a", &b, "--reason", "again"])
        .at(T)
        .success();
    r.cmd(["dlq", "purge", "--older-than", "1s", "--yes"])
        .at(T + 5000)
        .success();
    assert_eq!(statuses(&conn, &b), [("*".into(), "delivered".into())]);
}

#[test]
fn relay_dead_letters_are_failed_rows() {
    let (r, conn) = server_world();
    r.add(&["relay.agent.a"]);
    // Nothing matched: accounted, dead-lettered under the subject, traced
    // no_subscriber, as DorkOS's publish does.
    let out = r
        .cmd([
            "send",
            "relay.nobody.x",
            "hi",
            "--from",
            "relay.agent.s",
            "--json",
        ])
        .at(T)
        .code(69);
    let id = out.stderr_json()["error"]["message"]
        .as_str()
        .and_then(|m| m.split_whitespace().find(|w| crate::harness::is_ulid(w)))
        .map(str::to_string)
        .unwrap_or_else(|| r.files("relay.nobody.x", "failed")[0].replace(".json", ""));
    assert_eq!(
        statuses(&conn, &id),
        [
            ("*".into(), "delivered".into()),
            ("relay.nobody.x".into(), "failed".into())
        ]
    );
    let s = span(&conn, &id);
    assert_eq!(s["status"], "no_subscriber", "{s}");
    // Past its TTL, a message is dead-lettered by recv: its row is failed.
    let e = r
        .cmd(["send", "relay.agent.a", "old", "--ttl", "1s"])
        .at(T)
        .success()
        .id();
    r.cmd(["recv", "relay.agent.a"]).at(T + 5000).code(66);
    assert_eq!(
        statuses(&conn, &e)[1],
        ("relay.agent.a".into(), "failed".into())
    );
    // A removed endpoint leaves no rows behind.
    let f = r.cmd(["send", "relay.agent.a", "x"]).at(T).success().id();
    r.cmd(["endpoints", "remove", "relay.agent.a", "--force"])
        .at(T)
        .success();
    assert_eq!(statuses(&conn, &f), [("*".into(), "delivered".into())]);
}

#[test]
fn refused_sends_are_accounted_and_traced_failed() {
    let (r, conn) = server_world();
    r.add(&["relay.agent.a", "relay.agent.b"]);
    r.write_file(
        "config.json",
        r#"{"reliability":{"backpressure":{"maxMailboxSize":1},"rateLimit":{"maxPerWindow":1}}}"#,
    );
    r.cmd(["send", "relay.agent.a", "1", "--from", "s"])
        .at(T)
        .success();
    // A full mailbox: DorkOS's `*` row (its rate limiter counts the
    // publish), no copy, a failed span.
    let out = r
        .cmd(["send", "relay.agent.a", "2", "--from", "s", "--json"])
        .at(T)
        .code(75);
    let _ = out;
    let ids: Vec<String> = rows(&conn)
        .into_iter()
        .filter(|x| x.endpoint_hash == "*")
        .map(|x| x.id)
        .collect();
    assert_eq!(ids.len(), 2, "{:?}", rows(&conn));
    let refused = &ids[1];
    assert_eq!(statuses(&conn, refused), [("*".into(), "delivered".into())]);
    let s = span(&conn, refused);
    assert_eq!(s["status"], "failed", "{s}");
    let meta: Value =
        serde_json::from_str(s["metadata"].as_str().unwrap_or_default()).unwrap_or(Value::Null);
    assert_eq!(meta["deliveredTo"], 0, "{meta}");
    assert_eq!(meta["rejectedCount"], 1, "{meta}");
    // Past the rate limit: no row at all, a failed span with its code.
    r.cmd(["send", "relay.agent.b", "3", "--from", "s"])
        .at(T)
        .code(75);
    let spans: Vec<Value> = {
        let mut st = conn
            .prepare("SELECT metadata FROM relay_traces ORDER BY sent_at, id")
            .unwrap_or_else(|e| panic!("{e}"));
        st.query_map([], |r| r.get::<_, String>(0))
            .unwrap_or_else(|e| panic!("{e}"))
            .flatten()
            .map(|m| serde_json::from_str(&m).unwrap_or(Value::Null))
            .collect()
    };
    assert!(
        spans.iter().any(|m| m["rejectionCode"] == "rate_limited"),
        "{spans:?}"
    );
    assert_eq!(
        rows(&conn)
            .iter()
            .filter(|x| x.endpoint_hash == "*")
            .count(),
        2
    );
}

#[test]
fn a_busy_dorkos_never_blocks_a_send_and_is_caught_up_in_order() {
    let (r, conn) = server_world();
    r.add(&["relay.agent.a"]);
    // DorkOS holds its write lock for the whole send (a migration, say).
    let holder = Connection::open(server_db(&r)).unwrap_or_else(|e| panic!("{e}"));
    holder
        .execute_batch(
            "BEGIN IMMEDIATE; INSERT INTO __drizzle_migrations (hash, created_at) VALUES ('x', 1);",
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let id = r.cmd(["send", "relay.agent.a", "hi"]).at(T).success().id();
    let pending = r.path("dorkos.dork.db.pending");
    let kept = std::fs::read_to_string(&pending).unwrap_or_default();
    assert!(kept.contains(&id), "kept for later: {kept}");
    // Its consumer acks while DorkOS is still busy: kept too, after it.
    r.cmd(["recv", "relay.agent.a", "--ack"]).at(T).success();
    holder
        .execute_batch("COMMIT")
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        rows(&conn).is_empty(),
        "nothing written while DorkOS was busy"
    );
    // The next command that touches DorkOS's index writes the backlog
    // first, in order: the ack wins over the send's pending row.
    let other = r
        .cmd(["send", "relay.agent.a", "next"])
        .at(T)
        .success()
        .id();
    assert_eq!(
        statuses(&conn, &id),
        [
            ("*".into(), "delivered".into()),
            ("relay.agent.a".into(), "delivered".into())
        ]
    );
    assert_eq!(statuses(&conn, &other)[1].1, "pending");
    assert_eq!(std::fs::read_to_string(&pending).unwrap_or_default(), "");
}

#[test]
fn a_copy_finished_before_its_row_was_written_stays_finished() {
    // A consumer may ack a copy between its rename into new/ and the rows
    // of its send: the send's row never overwrites the ack's.
    let (r, conn) = server_world();
    r.add(&["relay.agent.a"]);
    let id = "01KBZ0000000000000000000AA";
    let env = dorkos_envelope(id, "relay.agent.a", &serde_json::json!("x"));
    r.write_file(
        &format!("mailboxes/relay.agent.a/cur/{id}.json"),
        serde_json::to_vec_pretty(&env).unwrap_or_default(),
    );
    r.cmd(["ack", "relay.agent.a", id]).at(T).success();
    assert_eq!(
        statuses(&conn, id),
        [("relay.agent.a".into(), "delivered".into())]
    );
    let row = &rows(&conn)[0];
    assert_eq!(row.created_at, "2026-01-01T00:00:00.000Z");
    assert_eq!(row.subject, "relay.agent.a");
}

#[test]
fn without_a_dorkos_index_none_is_created() {
    let r = Relay::new();
    r.add(&["a.x"]);
    let id = r.send("a.x", "hi");
    r.cmd(["recv", "a.x"]).success();
    r.cmd(["ack", "a.x", &id]).success();
    r.cmd(["send", "nobody", "hi"]).code(69);
    assert!(!server_db(&r).exists(), "no dork.db made");
    assert!(!r.path("index.db").exists(), "no index.db made");
    let names: Vec<String> = std::fs::read_dir(r.home())
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(!names.iter().any(|n| n.starts_with("dorkos.")), "{names:?}");
}

#[test]
fn a_file_that_is_not_dorkos_index_is_left_alone() {
    let r = Relay::new();
    r.add(&["a.x"]);
    // An index.db of someone else's, and one DorkOS has not migrated yet.
    let other = Connection::open(r.path("index.db")).unwrap_or_else(|e| panic!("{e}"));
    other
        .execute_batch("CREATE TABLE notes (x TEXT); CREATE TABLE relay_index (id TEXT);")
        .unwrap_or_else(|e| panic!("{e}"));
    drop(other);
    let before = std::fs::read(r.path("index.db")).unwrap_or_default();
    r.send("a.x", "hi");
    assert_eq!(
        std::fs::read(r.path("index.db")).unwrap_or_default(),
        before
    );
    assert!(!r.path("dorkos.index.db.pending").exists());
}

#[test]
fn the_standalone_index_gets_rows_but_no_spans() {
    let r = Relay::new();
    r.add(&["relay.agent.a"]);
    let conn = create(&r.path("index.db"));
    let id = r.send("relay.agent.a", "hi");
    assert_eq!(
        statuses(&conn, &id),
        [
            ("*".into(), "delivered".into()),
            ("relay.agent.a".into(), "pending".into())
        ]
    );
    let spans: i64 = conn
        .query_row("SELECT count(*) FROM relay_traces", [], |r| r.get(0))
        .unwrap_or(-1);
    assert_eq!(spans, 0, "a bare RelayCore records no traces");
}

#[test]
fn dorkos_backpressure_admits_again_once_relay_drained_the_mailbox() {
    // A DorkOS publisher and a relay consumer share a mailbox at DorkOS's
    // default capacity (1000): DorkOS published 990 (files and rows, as
    // its publish writes them) and relay sent 10.
    let (r, conn) = server_world();
    let ep = "relay.inbox.p.a";
    r.add(&[ep]);
    let ins = "INSERT INTO relay_index (id, subject, endpoint_hash, status, expires_at, sender, created_at) VALUES (?1, ?2, ?3, ?4, NULL, ?5, ?6)";
    for i in 0..990u32 {
        let id = format!("01KBZ{i:021}");
        let env = dorkos_envelope(&id, ep, &serde_json::json!({"content": i}));
        r.write_file(
            &format!("mailboxes/{ep}/new/{id}.json"),
            serde_json::to_vec_pretty(&env).unwrap_or_default(),
        );
        let created = "2026-01-01T00:00:00.000Z";
        conn.execute(
            ins,
            rusqlite::params![id, ep, "*", "delivered", "agent:legacy", created],
        )
        .and_then(|_| {
            conn.execute(
                ins,
                rusqlite::params![id, ep, ep, "pending", Option::<String>::None, created],
            )
        })
        .unwrap_or_else(|e| panic!("{e}"));
    }
    for _ in 0..10 {
        r.cmd(["send", ep, "hi"]).at(T).success();
    }
    // Full: DorkOS would refuse its next publish (pending >= maxMailboxSize).
    assert_eq!(dorkos_pending(&conn, ep), 1000);
    // relay's consumer drains it.
    for _ in 0..2 {
        r.cmd(["recv", ep, "--ack", "-n", "500"]).at(T).success();
    }
    assert!(r.files(ep, "new").is_empty() && r.files(ep, "cur").is_empty());
    // DorkOS's own backpressure query finds the mailbox empty: it admits.
    assert_eq!(dorkos_pending(&conn, ep), 0);
}
