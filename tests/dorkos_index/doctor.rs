//! `doctor` on a home DorkOS shares: DorkOS's index files, `.owner`
//! markers, pattern-named dead-letter directories, 0755 mailboxes and
//! DorkOS-written mail are not problems, and `--repair` touches none.

use std::os::unix::fs::PermissionsExt;

use super::{create, server_world};
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
