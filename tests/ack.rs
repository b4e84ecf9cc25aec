//! `relay ack` and `relay nack`: claimed messages leave `cur/`, removed or
//! dead-lettered with a reason sidecar; ids that are not claimed are errors.

use serde_json::json;

use crate::harness::Relay;

/// An endpoint `q` with `n` messages sent and claimed; returns their ids.
fn claimed(r: &Relay, n: usize) -> Vec<String> {
    r.add(&["q"]);
    let ids: Vec<String> = (0..n).map(|i| r.send("q", &format!("m{i}"))).collect();
    r.cmd(["recv", "q", "-n", &n.to_string()]).success();
    assert_eq!(r.files("q", "cur").len(), n);
    ids
}

#[test]
fn ack_removes_several_claimed_messages() {
    let r = Relay::new();
    let ids = claimed(&r, 2);
    let report = r
        .cmd(["ack", "q", &ids[0], &ids[1], "--json"])
        .success()
        .json();
    assert_eq!(report["acked"], json!(ids));
    assert!(r.files("q", "cur").is_empty());
    assert!(r.files("q", "failed").is_empty());
}

#[test]
fn ack_twice_is_harmless_and_says_so() {
    let r = Relay::new();
    let ids = claimed(&r, 1);
    r.cmd(["ack", "q", &ids[0]]).success();
    r.cmd(["ack", "q", &ids[0]])
        .success()
        .stderr_has(&[&ids[0], "already"]);
}

#[test]
fn ack_of_an_unclaimed_message_exits_65_and_leaves_it() {
    let r = Relay::new();
    r.add(&["q"]);
    let id = r.send("q", "waiting");
    r.cmd(["ack", "q", &id])
        .code(65)
        .stderr_has(&[&id, "not claimed", "relay recv q"]);
    assert_eq!(r.files("q", "new"), [format!("{id}.json")]);
}

#[test]
fn ack_of_an_unknown_id_exits_65() {
    let r = Relay::new();
    r.add(&["q"]);
    r.cmd(["ack", "q", "01ARZ3NDEKTSV4RRFFQ69G5FAV"])
        .code(65)
        .stderr_has(&["01ARZ3NDEKTSV4RRFFQ69G5FAV"]);
}

#[test]
fn ack_finishes_the_good_ids_and_reports_the_bad_ones() {
    let r = Relay::new();
    let ids = claimed(&r, 1);
    r.cmd(["ack", "q", &ids[0], "01ARZ3NDEKTSV4RRFFQ69G5FAV"])
        .code(65)
        .stderr_has(&["01ARZ3NDEKTSV4RRFFQ69G5FAV"]);
    assert!(r.files("q", "cur").is_empty(), "the claimed one is acked");
}

#[test]
fn ids_that_could_escape_the_mailbox_are_rejected() {
    let r = Relay::new();
    claimed(&r, 1);
    r.write_file("mailboxes/q/victim.json", "{}");
    let before = r.listing();
    for bad in ["../victim", "..", ".hidden", "a/b"] {
        r.cmd(["ack", "q", bad]).code(65).stderr_has(&[bad]);
        r.cmd(["nack", "q", bad]).code(65).stderr_has(&[bad]);
    }
    assert_eq!(r.listing(), before);
}

#[test]
fn ack_on_an_unknown_endpoint_exits_69() {
    let r = Relay::new();
    r.add(&["q"]);
    r.cmd(["ack", "nope", "01ARZ3NDEKTSV4RRFFQ69G5FAV"])
        .code(69)
        .stderr_has(&["'nope'", "q"]);
}

#[test]
fn nack_dead_letters_with_a_reason_sidecar() {
    let r = Relay::new();
    let ids = claimed(&r, 1);
    let id = &ids[0];
    let report = r
        .cmd(["nack", "q", id, "--reason", "tool crashed", "--json"])
        .success()
        .json();
    assert_eq!(report["nacked"], json!([id]));
    assert!(r.files("q", "cur").is_empty());
    assert!(r.files("q", "new").is_empty());
    assert_eq!(
        r.files("q", "failed"),
        [format!("{id}.json"), format!("{id}.reason.json")]
    );

    let env = r.read_json(&format!("mailboxes/q/failed/{id}.json"));
    assert_eq!(env["id"], id.as_str());
    assert_eq!(env["payload"], "m0");
    let sidecar = r.read_json(&format!("mailboxes/q/failed/{id}.reason.json"));
    let mut keys: Vec<&str> = sidecar
        .as_object()
        .map(|o| o.keys().map(String::as_str).collect())
        .unwrap_or_default();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["code", "endpointHash", "envelope", "failedAt", "reason"]
    );
    assert_eq!(sidecar["reason"], "tool crashed");
    assert_eq!(sidecar["code"], "nack");
    assert_eq!(sidecar["endpointHash"], "q");
    assert_eq!(sidecar["envelope"], env, "the sidecar holds the envelope");
    let failed_at = sidecar["failedAt"].as_str().unwrap_or_default();
    assert!(
        failed_at.ends_with('Z') && failed_at.len() == 24,
        "{failed_at}"
    );

    let list = r.cmd(["endpoints", "--json"]).success().json();
    assert_eq!(list["endpoints"][0]["failed"], 1, "{list}");

    // Already dead-lettered: a second nack is harmless, an ack is an error.
    r.cmd(["nack", "q", id]).success().stderr_has(&["already"]);
    r.cmd(["ack", "q", id])
        .code(65)
        .stderr_has(&["dead-lettered"]);
}

#[test]
fn nack_of_an_unclaimed_message_exits_65_and_leaves_it() {
    let r = Relay::new();
    r.add(&["q"]);
    let id = r.send("q", "waiting");
    r.cmd(["nack", "q", &id, "--reason", "no"])
        .code(65)
        .stderr_has(&[&id]);
    assert_eq!(r.files("q", "new"), [format!("{id}.json")]);
    assert!(r.files("q", "failed").is_empty());
}
