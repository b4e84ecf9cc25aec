//! `relay peek`: lists pending, claimed and failed messages without claiming
//! anything: no rename, no index write, no lease sweep, no home created;
//! foreign entries are listed with what is wrong with them, never followed.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::harness::{Relay, T, dorkos_envelope};

/// Every regular file under the home with its bytes, and every other entry
/// with its kind: what a read-only command must leave exactly as it was.
fn snapshot(r: &Relay) -> BTreeMap<PathBuf, String> {
    fn walk(dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
        let Ok(rd) = fs::read_dir(dir) else { return };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(md) = fs::symlink_metadata(&p) else {
                continue;
            };
            let what = if md.is_dir() {
                walk(&p, out);
                "dir".to_string()
            } else if md.is_file() {
                format!("{:?}", fs::read(&p).unwrap_or_default())
            } else {
                format!("{:?}", md.file_type())
            };
            out.insert(p, what);
        }
    }
    let mut out = BTreeMap::new();
    walk(&r.home(), &mut out);
    out
}

/// `peek EP --json --status S`: the lines.
#[track_caller]
fn peek(r: &Relay, ep: &str, status: &str) -> Vec<Value> {
    r.cmd(["peek", ep, "--json", "--status", status])
        .at(T + 60_000)
        .success()
        .json_lines()
}

fn ids(lines: &[Value]) -> Vec<String> {
    lines
        .iter()
        .map(|l| l["id"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn peek_never_claims_and_lists_each_status() {
    let r = Relay::new();
    r.add(&["svc"]);
    let sent: Vec<String> = (0..5)
        .map(|i| {
            r.cmd([
                "send",
                "svc",
                &format!("{{\"n\":{i}}}"),
                "--from",
                "agent.a",
            ])
            .at(T)
            .success()
            .id()
        })
        .collect();
    // sent[0] claimed (its lease long gone at peek time: a sweep would
    // put it back), sent[1] nacked, sent[2..] pending.
    r.cmd(["recv", "svc", "--lease", "1s"]).at(T).success();
    r.cmd(["recv", "svc"]).at(T).success();
    r.cmd(["nack", "svc", &sent[1], "--reason", "bad input"])
        .at(T)
        .success();
    let before = snapshot(&r);

    let pending = peek(&r, "svc", "pending");
    assert_eq!(ids(&pending), sent[2..].to_vec());
    for (line, n) in pending.iter().zip(2..) {
        assert_eq!(line["status"], "pending");
        assert_eq!(line["payload"]["n"], n);
        assert_eq!(line["from"], "agent.a");
        assert_eq!(line["deliveryCount"], 0);
        assert!(line["sizeBytes"].as_u64().is_some_and(|s| s > 0), "{line}");
    }
    let claimed = peek(&r, "svc", "claimed");
    assert_eq!(ids(&claimed), vec![sent[0].clone()]);
    assert!(claimed[0]["claimedAt"].is_string(), "{}", claimed[0]);
    let failed = peek(&r, "svc", "failed");
    assert_eq!(ids(&failed), vec![sent[1].clone()]);
    assert_eq!(failed[0]["failure"]["reason"], "bad input");
    assert_eq!(failed[0]["failure"]["code"], "nack");
    // All of them, oldest first; -n takes the first N and says how many.
    assert_eq!(ids(&peek(&r, "svc", "all")), sent);
    let out = r
        .cmd(["peek", "svc", "--json", "-n", "2"])
        .at(T + 60_000)
        .success()
        .stderr_has(&["showing 2 of 3 pending message(s) of 'svc'"]);
    assert_eq!(ids(&out.json_lines()), sent[2..4].to_vec());
    // The table for people names every message and its state.
    let table = r
        .cmd(["peek", "svc", "--status", "all"])
        .at(T + 60_000)
        .success();
    for id in &sent {
        assert!(table.stdout.contains(id.as_str()), "{}", table.stdout);
    }
    assert!(table.stdout.contains("nack: bad input"), "{}", table.stdout);

    // Nothing moved, nothing written: not a file, not the index, not the
    // expired lease (a sweep would have put sent[0] back in new/).
    assert_eq!(snapshot(&r), before, "peek changed the home");
    // The next receiver still gets the oldest pending message, first time.
    let got = r.cmd(["recv", "svc", "--json"]).at(T).success().json();
    assert_eq!(got["id"], sent[2].as_str());
    assert_eq!(got["deliveryCount"], 0);
}

#[test]
fn peek_shows_foreign_entries_without_following_or_moving_them() {
    let r = Relay::new();
    r.add(&["svc"]);
    r.write_file("config.json", r#"{"maxPayloadBytes": 1024}"#);
    let new = r.mailbox("svc").join("new");
    // A FIFO (reading it would block), a symlink to a real envelope
    // outside the home (must not be followed), a directory, a file over
    // the read cap, a file that is not JSON, a DorkOS envelope.
    let fifo = new.join("01FIFO00000000000000000000.json");
    let made = Command::new("mkfifo").arg(&fifo).status();
    assert!(made.is_ok_and(|s| s.success()), "mkfifo failed");
    let outside = r.scratch().join("secret.json");
    let secret = dorkos_envelope("01LINK00000000000000000000", "svc", &"secret".into());
    fs::write(&outside, secret.to_string()).unwrap_or_else(|e| panic!("{e}"));
    symlink(&outside, new.join("01LINK00000000000000000000.json"))
        .unwrap_or_else(|e| panic!("{e}"));
    fs::create_dir(new.join("01DIR000000000000000000000.json")).unwrap_or_else(|e| panic!("{e}"));
    r.write_file(
        "mailboxes/svc/new/01HUGE00000000000000000000.json",
        vec![b' '; 8 * 1024 + 64 * 1024],
    );
    r.write_file(
        "mailboxes/svc/new/01JUNK00000000000000000000.json",
        "not json",
    );
    let dorkos = dorkos_envelope("01KEEP00000000000000000000", "svc", &"from dorkos".into());
    r.write_file(
        "mailboxes/svc/new/01KEEP00000000000000000000.json",
        serde_json::to_vec_pretty(&dorkos).unwrap_or_default(),
    );
    let before = snapshot(&r);

    let lines = peek(&r, "svc", "all");
    let by_id: BTreeMap<String, &Value> = lines
        .iter()
        .map(|l| (l["id"].as_str().unwrap_or_default().to_string(), l))
        .collect();
    let problem = |id: &str| {
        by_id[id]["problem"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(by_id.len(), 6, "{lines:#?}");
    assert!(problem("01FIFO00000000000000000000").contains("FIFO"));
    assert!(problem("01LINK00000000000000000000").contains("symlink"));
    assert!(problem("01DIR000000000000000000000").contains("directory"));
    assert!(problem("01HUGE00000000000000000000").contains("over the read limit"));
    assert!(problem("01JUNK00000000000000000000").contains("not a relay envelope"));
    // What the symlink points at is never shown.
    assert!(by_id["01LINK00000000000000000000"]["payload"].is_null());
    assert_eq!(
        by_id["01KEEP00000000000000000000"]["payload"],
        "from dorkos"
    );
    assert!(by_id["01KEEP00000000000000000000"]["problem"].is_null());
    for l in &lines {
        assert_eq!(l["status"], "pending", "{l}");
    }
    // Listed, not quarantined: a peek moves nothing to failed/.
    assert_eq!(snapshot(&r), before, "peek changed the home");
    assert!(r.files("svc", "failed").is_empty());
}

#[test]
fn peek_does_not_create_a_missing_home_or_endpoint() {
    let r = Relay::new();
    let out = r.cmd(["peek", "svc"]).code(69);
    assert!(out.stderr.contains("no relay home at"), "{}", out.stderr);
    assert!(!r.home().exists(), "peek created the home");
    // With a home: an unknown endpoint is 69 (as recv), nothing created.
    r.add(&["svc"]);
    let before = snapshot(&r);
    r.cmd(["peek", "other"])
        .code(69)
        .stderr_has(&["no endpoint 'other'", "known endpoints: svc"]);
    r.cmd(["peek", "svc", "--status", "done"]).code(64);
    assert_eq!(snapshot(&r), before);
    // An empty mailbox is no error: nothing listed.
    r.cmd(["peek", "svc", "--json"]).success().stdout_is("");
}
