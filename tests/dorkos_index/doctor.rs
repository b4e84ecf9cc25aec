//! `doctor` on a home DorkOS shares: DorkOS's index files, `.owner`
//! markers, pattern-named dead-letter directories, 0755 mailboxes and
//! DorkOS-written mail are not problems, and `--repair` touches none.

use std::os::unix::fs::PermissionsExt;

use serde_json::Value;

use super::{create, dorkos_pending, rows, server_world, statuses};
use crate::harness::{T, dorkos_envelope};

#[test]
fn doctor_leaves_dorkos_files_alone() {
    let (r, server) = server_world();
    let standalone = create(&r.path("index.db"));
    r.add(&["relay.agent.a"]);
    let mb = r.mailbox("relay.agent.a");
    // As DorkOS leaves a mailbox: default modes, an owner marker.
    for d in ["", "tmp", "new", "cur", "failed"] {
        let _ = std::fs::set_permissions(mb.join(d), std::fs::Permissions::from_mode(0o755));
    }
    r.write_file("mailboxes/relay.agent.a/.owner", "relay.agent.owner");
    // DorkOS's own mail: one pending, one claimed by DorkOS, and a
    // pattern publish that matched nothing, each with DorkOS's rows.
    let mut own = Vec::new();
    for (i, (dir, sub)) in [
        ("relay.agent.a", "new"),
        ("relay.agent.a", "cur"),
        ("relay.nobody.>", "failed"),
    ]
    .into_iter()
    .enumerate()
    {
        let id = format!("01KBZ00000000000000000000{i}");
        let env = dorkos_envelope(&id, dir, &serde_json::json!(i));
        r.write_file(
            &format!("mailboxes/{dir}/{sub}/{id}.json"),
            serde_json::to_vec_pretty(&env).unwrap_or_default(),
        );
        let status = if sub == "failed" { "failed" } else { "pending" };
        for conn in [&server, &standalone] {
            conn.execute(
                "INSERT INTO relay_index (id, subject, endpoint_hash, status, created_at) VALUES (?1, ?2, ?2, ?3, ?4)",
                rusqlite::params![id, dir, status, "2026-01-01T00:00:00.000Z"],
            )
            .unwrap_or_else(|e| panic!("{e}"));
        }
        own.push((dir, sub, id));
    }
    r.write_file(
        "mailboxes/relay.nobody.>/failed/01KBZ000000000000000000002.reason.json",
        r#"{"envelope":null,"reason":"no matching endpoints or adapters","failedAt":"2026-01-01T00:00:00.000Z","endpointHash":"relay.nobody.>"}"#,
    );
    // And relay's own traffic beside it.
    r.cmd(["send", "relay.agent.a", "mine"]).at(T).success();
    let before = r.listing();
    let v = r.cmd(["doctor", "--json"]).at(T).success().json();
    assert_eq!(v["consistent"], true, "{v}");
    assert_eq!(v["findings"], serde_json::json!([]), "{v}");
    let d = v["dorkos"].as_array().cloned().unwrap_or_default();
    assert_eq!(d.len(), 2, "{v}");
    assert!(
        d.iter().all(|x| x["inStep"] == true && x["pending"] == 0),
        "{v}"
    );
    r.cmd(["doctor", "--repair"]).at(T).success();
    for (dir, sub, id) in &own {
        assert!(
            r.mailbox(dir).join(sub).join(format!("{id}.json")).exists(),
            "{dir}/{sub}/{id} left where DorkOS put it\n{}",
            r.listing()
        );
    }
    assert!(mb.join(".owner").exists());
    let mode = std::fs::metadata(&mb)
        .map(|m| m.permissions().mode() & 0o777)
        .unwrap_or(0);
    assert_eq!(mode, 0o755, "DorkOS's modes kept");
    // Text mode says it too.
    r.cmd(["doctor"]).at(T).success().stdout_is(&format!(
        "relay store is consistent (4 message(s) on disk, all indexed)\nDorkOS index {}: kept in step\nDorkOS index {}: kept in step\n",
        r.path("index.db").display(),
        super::server_db(&r).display()
    ));
    let _ = before;
}

/// A crash between a file's move and its DorkOS row (a send's row written
/// and the process killed before the rename; an ack, nack or requeue
/// killed after the move), and an update lost: `doctor` reports DorkOS's
/// index out of step with the mailboxes, and `--repair` brings it back so
/// DorkOS's backpressure counts what is waiting, nothing more.
#[test]
fn doctor_repair_brings_dorkos_index_back_in_step_after_a_crash() {
    let (r, conn) = server_world();
    let ep = "relay.agent.a";
    r.add(&[ep]);
    let ids: Vec<String> = (0..4)
        .map(|i| r.cmd(["send", ep, &i.to_string()]).at(T).success().id())
        .collect();
    let (acked, lost, nacked, waiting) = (&ids[0], &ids[1], &ids[2], &ids[3]);
    r.cmd(["recv", ep, "-n", "1"]).at(T).success();
    r.cmd(["ack", ep, acked]).at(T).success();
    r.cmd(["recv", ep, "-n", "2"]).at(T).success();
    r.cmd(["nack", ep, nacked, "--reason", "boom"])
        .at(T)
        .success();
    let set = |id: &str, status: &str| {
        conn.execute(
            "UPDATE relay_index SET status = ?3 WHERE id = ?1 AND endpoint_hash = ?2",
            rusqlite::params![id, ep, status],
        )
        .unwrap_or_else(|e| panic!("{e}"));
    };
    // The ack and the nack were killed after their move: still pending.
    set(acked, "pending");
    set(nacked, "pending");
    // The claimed copy's row was lost.
    conn.execute(
        "DELETE FROM relay_index WHERE id = ?1 AND endpoint_hash = ?2",
        rusqlite::params![lost, ep],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    // A send killed between its row and its rename: a row, no file.
    let phantom = "01KBZ0000000000000000PHANT";
    conn.execute(
        "INSERT INTO relay_index (id, subject, endpoint_hash, status, created_at) VALUES (?1, ?2, ?2, 'pending', ?3)",
        rusqlite::params![phantom, ep, "2025-12-31T23:00:00.000Z"],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        dorkos_pending(&conn, ep),
        4,
        "acked, nacked, phantom, waiting"
    );
    let later = T + 120_000;

    let v = r.cmd(["doctor", "--json"]).at(later).code(65).json();
    let found: Vec<&Value> = v["findings"]
        .as_array()
        .map(|f| f.iter().filter(|x| x["check"] == "DorkOS index").collect())
        .unwrap_or_default();
    assert_eq!(found.len(), 1, "{v}");
    let detail = found[0]["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("1 file(s) without a row")
            && detail.contains("1 row(s) with another status")
            && detail.contains("2 row(s) of files that are gone"),
        "{detail}"
    );
    assert_eq!(found[0]["repaired"], false, "{v}");
    assert_eq!(
        dorkos_pending(&conn, ep),
        4,
        "nothing written without --repair"
    );

    let v = r
        .cmd(["doctor", "--repair", "--json"])
        .at(later)
        .success()
        .json();
    assert!(
        v["findings"].as_array().is_some_and(|f| f
            .iter()
            .any(|x| x["check"] == "DorkOS index" && x["repaired"] == true)),
        "{v}"
    );
    let copy = |id: &str| {
        statuses(&conn, id)
            .into_iter()
            .find(|(hash, _)| hash == ep)
            .map(|(_, s)| s)
    };
    assert_eq!(copy(acked).as_deref(), Some("delivered"), "relay acked it");
    assert_eq!(copy(nacked).as_deref(), Some("failed"), "in failed/");
    assert_eq!(copy(lost).as_deref(), Some("pending"), "in cur/");
    assert_eq!(copy(waiting).as_deref(), Some("pending"), "in new/");
    assert_eq!(copy(phantom), None, "never delivered: no row");
    // The row given back is the one DorkOS's publish writes for a copy.
    let row = rows(&conn)
        .into_iter()
        .find(|x| x.id == *lost && x.endpoint_hash == ep)
        .unwrap_or_else(|| panic!("no row for {lost}"));
    assert_eq!((row.subject.as_str(), row.sender.as_ref()), (ep, None));
    assert_eq!(row.created_at, "2026-01-01T00:00:00.000Z", "{row:?}");
    assert_eq!(
        dorkos_pending(&conn, ep),
        2,
        "the claimed one and the waiting one"
    );
    let v = r.cmd(["doctor", "--json"]).at(later).success().json();
    assert_eq!(v["consistent"], true, "{v}");
}
