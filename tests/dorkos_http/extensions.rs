//! relay's own routes beside DorkOS's: breakers reset and open, limits
//! reset, ack and nack over HTTP, status.

use serde_json::json;

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
