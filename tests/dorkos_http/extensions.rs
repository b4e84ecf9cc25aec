//! relay's own routes beside DorkOS's: breakers reset and open, limits
//! reset, ack and nack over HTTP, status.

use serde_json::{Value, json};

use super::{post, publish, serve};
use crate::harness::{Relay, T};

#[test]
fn breakers_open_and_reset_over_http() {
    let r = Relay::new();
    r.add(&["agent.b"]);
    let s = serve(&r);
    let opened = post(
        &s,
        "/api/relay/breakers/open",
        &json!({"sender": "agent.a", "endpoint": "agent.b", "duration": "10m"}),
    );
    assert_eq!(opened.status, 200, "{opened:?}");
    let v = opened.json();
    assert_eq!(
        (&v["state"], &v["nextProbeAt"]),
        (&json!("open"), &json!("2026-01-01T00:10:00.000Z")),
        "{v}"
    );
    let br = s.get_json("/api/relay/breakers");
    assert_eq!(br["breakers"][0]["state"], "open", "{br}");
    let refused = publish(
        &s,
        &json!({"subject": "agent.b", "from": "agent.a", "payload": 1}),
    );
    assert_eq!(refused["deliveredTo"], 0, "{refused}");
    assert_eq!(
        refused["rejected"][0]["reason"], "circuit_open",
        "{refused}"
    );
    assert!(r.files("agent.b", "new").is_empty());

    post(&s, "/api/relay/breakers/reset", &json!({})).assert_code(400, "DATA");
    post(
        &s,
        "/api/relay/breakers/open",
        &json!({"sender": "agent.a"}),
    )
    .assert_code(400, "DATA");
    post(
        &s,
        "/api/relay/breakers/open",
        &json!({"sender": "agent.a", "endpoint": "agent.b", "duration": "soon"}),
    )
    .assert_code(400, "DATA");
    let reset = post(
        &s,
        "/api/relay/breakers/reset",
        &json!({"sender": "agent.a"}),
    );
    assert_eq!(
        reset.json(),
        json!({"reset": ["agent.a -> agent.b"]}),
        "{reset:?}"
    );
    post(
        &s,
        "/api/relay/breakers/reset",
        &json!({"sender": "agent.nobody"}),
    )
    .assert_code(400, "DATA");
    let ok = publish(
        &s,
        &json!({"subject": "agent.b", "from": "agent.a", "payload": 2}),
    );
    assert_eq!(ok["deliveredTo"], 1, "{ok}");
}

#[test]
fn a_rate_limit_resets_over_http() {
    let r = Relay::new();
    r.add(&["agent.b"]);
    r.write_file(
        "config.json",
        r#"{"reliability":{"rateLimit":{"maxPerWindow":1}}}"#,
    );
    let s = serve(&r);
    let m = json!({"subject": "agent.b", "from": "agent.a", "payload": 1});
    assert_eq!(publish(&s, &m)["deliveredTo"], 1);
    assert_eq!(publish(&s, &m)["rejected"][0]["reason"], "rate_limited");
    let lim = s.get_json("/api/relay/limits");
    assert_eq!(lim["limits"][0]["hardHits"], 1, "{lim}");
    post(&s, "/api/relay/limits/reset", &json!({})).assert_code(400, "DATA");
    let reset = post(&s, "/api/relay/limits/reset", &json!({"sender": "agent.a"}));
    assert_eq!(reset.json(), json!({"reset": 1}), "{reset:?}");
    assert_eq!(publish(&s, &m)["deliveredTo"], 1, "refilled");
}

#[test]
fn claimed_messages_are_acked_and_nacked_over_http() {
    let r = Relay::new();
    r.add(&["agent.b"]);
    let a = r
        .cmd(["send", "agent.b", "one", "--from", "agent.a"])
        .at(T)
        .success()
        .id();
    let b = r
        .cmd(["send", "agent.b", "two", "--from", "agent.a"])
        .at(T + 1)
        .success()
        .id();
    r.cmd(["recv", "agent.b", "-n", "2"]).at(T + 2).success();
    let s = serve(&r);
    let acked = post(&s, "/api/relay/endpoints/agent.b/ack", &json!({"ids": [a]}));
    assert_eq!(acked.status, 200, "{acked:?}");
    assert_eq!(acked.json()["acked"], json!([a]));
    assert_eq!(r.files("agent.b", "cur"), vec![format!("{b}.json")]);
    post(
        &s,
        "/api/relay/endpoints/agent.b/nack",
        &json!({"ids": [b]}),
    )
    .assert_code(400, "DATA");
    let nacked = post(
        &s,
        "/api/relay/endpoints/agent.b/nack",
        &json!({"ids": [b], "reason": "bad input"}),
    );
    assert_eq!(nacked.json()["nacked"], json!([b]), "{nacked:?}");
    let sidecar = r.read_json(&format!("mailboxes/agent.b/failed/{b}.reason.json"));
    assert_eq!(sidecar["reason"], "bad input", "{sidecar}");
    // DorkOS sees them as the index now says.
    let inbox = s.get_json("/api/relay/endpoints/agent.b/inbox?status=all");
    let statuses: Vec<&str> = inbox["messages"]
        .as_array()
        .map(|m| m.iter().filter_map(|x| x["status"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(statuses, vec!["delivered", "failed"], "{inbox}");

    let again = post(&s, "/api/relay/endpoints/agent.b/ack", &json!({"ids": [b]}));
    let v = again.assert_code(409, "NOT_SETTLED");
    assert!(
        v["error"]
            .as_str()
            .unwrap_or_default()
            .contains("dead-lettered"),
        "{v}"
    );
    post(&s, "/api/relay/endpoints/agent.b/ack", &json!({"ids": []})).assert_code(400, "DATA");
    post(
        &s,
        "/api/relay/endpoints/agent.nope/ack",
        &json!({"ids": [a]}),
    )
    .assert_error(404);
}

#[test]
fn status_and_the_other_reads_stay_beside_dorkos_routes() {
    let r = Relay::new();
    r.add(&["agent.b"]);
    let s = serve(&r);
    let st = s.get_json("/api/relay/status");
    assert_eq!(st["home"], r.home().display().to_string(), "{st}");
    for path in [
        "/api/relay/backpressure",
        "/api/relay/events",
        "/api/relay/redeliveries",
        "/api/relay/limits",
        "/api/relay/breakers",
    ] {
        assert!(s.get_json(path).is_object(), "{path}");
    }
}

/// The endpoints of `/api/relay/status` (the server keeps mailbox counts
/// between requests), and the same as `relay status` counts them afresh.
#[track_caller]
fn endpoints_both_ways(r: &Relay, s: &crate::surfaces::Server) -> (Value, Value) {
    let served = s.get_json("/api/relay/status")["endpoints"].clone();
    let counted = r.cmd(["status", "--json"]).at(T).success().json()["endpoints"].clone();
    (served, counted)
}

/// `(subject, new, cur, failed)` of each endpoint.
fn depths(endpoints: &Value) -> Vec<(String, u64, u64, u64)> {
    endpoints
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| {
                    let n = |k: &str| e[k].as_u64().unwrap_or(u64::MAX);
                    let name = e["subject"].as_str().unwrap_or_default().to_string();
                    (name, n("new"), n("cur"), n("failed"))
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn status_over_http_follows_every_change_of_the_mailboxes() {
    let r = Relay::new();
    r.add(&["agent.a", "agent.b"]);
    let s = serve(&r);
    let check = |what: &str, want: &[(&str, u64, u64, u64)]| {
        let (served, counted) = endpoints_both_ways(&r, &s);
        assert_eq!(served, counted, "{what}: served vs counted afresh");
        let want: Vec<(String, u64, u64, u64)> = want
            .iter()
            .map(|(e, n, c, f)| (e.to_string(), *n, *c, *f))
            .collect();
        assert_eq!(depths(&served), want, "{what}: {served}");
    };
    check("empty", &[("agent.a", 0, 0, 0), ("agent.b", 0, 0, 0)]);
    let id = r
        .cmd(["send", "agent.a", "one", "--json"])
        .at(T)
        .success()
        .json()["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    r.cmd(["send", "agent.a", "two"]).at(T).success();
    check("two sends", &[("agent.a", 2, 0, 0), ("agent.b", 0, 0, 0)]);
    // A file another program (DorkOS) moves in.
    r.write_file(
        "mailboxes/agent.b/new/01J0000000000000000000FAKE.json",
        br#"{"id":"01J0000000000000000000FAKE"}"#,
    );
    check(
        "a foreign file",
        &[("agent.a", 2, 0, 0), ("agent.b", 1, 0, 0)],
    );
    r.cmd(["recv", "agent.a", "-n", "2"]).at(T).success();
    check("two claims", &[("agent.a", 0, 2, 0), ("agent.b", 1, 0, 0)]);
    r.cmd(["nack", "agent.a", &id, "--reason", "no"])
        .at(T)
        .success();
    check("a nack", &[("agent.a", 0, 1, 1), ("agent.b", 1, 0, 0)]);
    // The last activity is the directories' time, whoever set it.
    let cur = r.mailbox("agent.a").join("cur");
    std::fs::File::open(&cur)
        .and_then(|f| f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1)))
        .unwrap_or_else(|e| panic!("cannot touch {}: {e}", cur.display()));
    std::fs::File::open(r.mailbox("agent.a").join("new"))
        .and_then(|f| f.set_modified(std::time::UNIX_EPOCH))
        .unwrap_or_else(|e| panic!("cannot touch new/: {e}"));
    std::fs::File::open(r.mailbox("agent.a").join("failed"))
        .and_then(|f| f.set_modified(std::time::UNIX_EPOCH))
        .unwrap_or_else(|e| panic!("cannot touch failed/: {e}"));
    check("touched", &[("agent.a", 0, 1, 1), ("agent.b", 1, 0, 0)]);
    let st = s.get_json("/api/relay/status");
    assert_eq!(
        st["endpoints"][0]["lastActivity"], "1970-01-01T00:00:01.000Z",
        "{st}"
    );
    r.cmd(["endpoints", "add", "agent.c"]).at(T).success();
    r.cmd(["endpoints", "remove", "agent.b", "--force"])
        .at(T)
        .success();
    check(
        "added and removed",
        &[("agent.a", 0, 1, 1), ("agent.c", 0, 0, 0)],
    );
    // A directory becomes an endpoint when its new/ appears.
    std::fs::create_dir(r.path("mailboxes/agent.d")).unwrap_or_else(|e| panic!("mkdir: {e}"));
    check("not yet", &[("agent.a", 0, 1, 1), ("agent.c", 0, 0, 0)]);
    std::fs::create_dir(r.path("mailboxes/agent.d/new")).unwrap_or_else(|e| panic!("mkdir: {e}"));
    check(
        "new/ made",
        &[
            ("agent.a", 0, 1, 1),
            ("agent.c", 0, 0, 0),
            ("agent.d", 0, 0, 0),
        ],
    );
    // cur/ appears with a message in it.
    r.write_file(
        "mailboxes/agent.d/cur/01J0000000000000000000CURR.json",
        br#"{"id":"01J0000000000000000000CURR"}"#,
    );
    check(
        "cur/ made",
        &[
            ("agent.a", 0, 1, 1),
            ("agent.c", 0, 0, 0),
            ("agent.d", 0, 1, 0),
        ],
    );
    // Another mailboxes/ put in place of the one the server watched.
    let other = r.path("mailboxes.next");
    for sub in ["new", "cur", "failed", "tmp"] {
        std::fs::create_dir_all(other.join("agent.a").join(sub))
            .unwrap_or_else(|e| panic!("mkdir: {e}"));
    }
    std::fs::write(
        other.join("agent.a/new/01J0000000000000000000NEXT.json"),
        b"{}",
    )
    .unwrap_or_else(|e| panic!("write: {e}"));
    std::fs::rename(r.path("mailboxes"), r.path("mailboxes.old"))
        .and_then(|()| std::fs::rename(&other, r.path("mailboxes")))
        .unwrap_or_else(|e| panic!("cannot swap mailboxes/: {e}"));
    check("swapped", &[("agent.a", 1, 0, 0)]);
}

/// More changes than the kernel queues between two requests (the queue
/// overflows, and later events are lost): the server counts everything
/// again, so a change whose event was lost still shows.
#[test]
fn status_over_http_counts_afresh_after_lost_change_events() {
    let queued: usize = std::fs::read_to_string("/proc/sys/fs/inotify/max_queued_events")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(16_384);
    let r = Relay::new();
    r.add(&["agent.a", "agent.b"]);
    let s = serve(&r);
    let (served, _) = endpoints_both_ways(&r, &s);
    assert_eq!(
        depths(&served),
        vec![
            ("agent.a".to_string(), 0, 0, 0),
            ("agent.b".to_string(), 0, 0, 0)
        ]
    );
    // Two events per file, on agent.a only: the queue is full after this.
    let cur = r.mailbox("agent.a").join("cur");
    for i in 0..queued / 2 + 1 {
        let f = cur.join(format!("{i:026}.json"));
        std::fs::write(&f, b"{}")
            .and_then(|()| std::fs::remove_file(&f))
            .unwrap_or_else(|e| panic!("cannot churn {}: {e}", f.display()));
    }
    // Its event is lost: only the overflow tells the server.
    r.write_file(
        "mailboxes/agent.b/new/01J0000000000000000000LOST.json",
        b"{}",
    );
    let (served, counted) = endpoints_both_ways(&r, &s);
    assert_eq!(served, counted);
    assert_eq!(
        depths(&served),
        vec![
            ("agent.a".to_string(), 0, 0, 0),
            ("agent.b".to_string(), 1, 0, 0)
        ]
    );
}
