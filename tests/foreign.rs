//! Files relay did not write: envelopes from DorkOS or dropped in by hand,
//! stray files in `tmp/` and `new/`, malformed JSON, DorkOS's own layout.

use std::os::unix::fs::PermissionsExt;

use serde_json::json;

use crate::harness::{Relay, dorkos_envelope};

const ID: &str = "01JZ0000000000000000000000";

#[test]
fn dorkos_envelope_dropped_into_new_is_received_with_unknown_fields() {
    let r = Relay::new();
    r.add(&["relay.agent.x"]);
    let mut env = dorkos_envelope(ID, "relay.agent.x", &json!({"content": "hi"}));
    env["somethingNew"] = json!([1, {"nested": true}]);
    env["dispatchId"] = json!("d-1");
    let bytes = serde_json::to_vec_pretty(&env).unwrap_or_default();
    let rel = format!("mailboxes/relay.agent.x/new/{ID}.json");
    r.write_file(&rel, &bytes);

    let got = r
        .cmd(["recv", "relay.agent.x", "--json"])
        .success()
        .stderr_empty()
        .json();
    assert_eq!(got["id"], ID);
    assert_eq!(got["from"], "agent:legacy");
    assert_eq!(got["payload"], json!({"content": "hi"}));
    assert_eq!(got["dispatchId"], "d-1");
    assert_eq!(got["somethingNew"], json!([1, {"nested": true}]));
    assert_eq!(got["budget"], env["budget"]);
    // The claimed file is the same bytes: relay does not rewrite it.
    let cur = std::fs::read(r.path(&format!("mailboxes/relay.agent.x/cur/{ID}.json")))
        .unwrap_or_default();
    assert_eq!(cur, bytes);

    // Not in the index, yet finished like any other message.
    r.cmd(["ack", "relay.agent.x", ID]).success();
    assert!(r.files("relay.agent.x", "cur").is_empty());
}

#[test]
fn hand_dropped_envelope_without_optional_fields_prints_its_payload() {
    let r = Relay::new();
    r.add(&["q"]);
    let mut env = dorkos_envelope(ID, "q", &json!("plain"));
    if let Some(b) = env["budget"].as_object_mut() {
        b.remove("ancestorChain");
    }
    r.write_file(&format!("mailboxes/q/new/{ID}.json"), env.to_string());
    r.cmd(["recv", "q"]).success().stdout_is("plain\n");
}

#[test]
fn stray_tmp_and_non_message_files_are_ignored() {
    let r = Relay::new();
    r.add(&["q"]);
    let strays = [
        ("tmp/01JZ0000000000000000000001.json", "{\"id\": \"01JZ"),
        ("new/README.txt", "not a message"),
        ("new/.hidden.json", "{}"),
        ("new/01JZ0000000000000000000002.reason.json", "{}"),
        (".owner", "agent.someone"),
    ];
    for (rel, body) in strays {
        r.write_file(&format!("mailboxes/q/{rel}"), body);
    }
    r.cmd(["recv", "q"]).code(66);
    let list = r.cmd(["endpoints", "--json"]).success().json();
    assert_eq!(list["endpoints"][0]["new"], 0, "{list}");

    let id = r.send("q", "real");
    r.cmd(["recv", "q"])
        .success()
        .stdout_is("real\n")
        .stderr_empty();
    assert_eq!(r.files("q", "cur"), [format!("{id}.json")]);
    for (rel, body) in strays {
        let path = r.path(&format!("mailboxes/q/{rel}"));
        assert_eq!(
            std::fs::read_to_string(&path).unwrap_or_default(),
            body,
            "{rel} was touched"
        );
    }
}

#[test]
fn malformed_json_is_moved_to_failed_and_the_next_message_is_received() {
    let r = Relay::new();
    r.add(&["q"]);
    // Sorts before any real ULID, so it is tried first.
    let bad = "00000000000000000000000001";
    r.write_file(&format!("mailboxes/q/new/{bad}.json"), "{not json");
    let id = r.send("q", "good");

    let out = r.cmd(["recv", "q", "--json"]).success();
    assert_eq!(out.json()["id"], id.as_str());
    let out = out.stderr_has(&["warning", bad, "failed"]);
    assert_eq!(out.stdout.lines().count(), 1, "only the good message");

    assert!(r.files("q", "new").is_empty());
    assert_eq!(
        r.files("q", "failed"),
        [format!("{bad}.json"), format!("{bad}.reason.json")]
    );
    let kept = std::fs::read_to_string(r.path(&format!("mailboxes/q/failed/{bad}.json")));
    assert_eq!(kept.unwrap_or_default(), "{not json", "moved, not lost");
    let sidecar = r.read_json(&format!("mailboxes/q/failed/{bad}.reason.json"));
    assert_eq!(sidecar["code"], "malformed");
    assert_eq!(sidecar["endpointHash"], "q");
    assert!(sidecar["envelope"].is_null(), "{sidecar}");
    assert!(sidecar["reason"].is_string() && sidecar["failedAt"].is_string());
}

#[test]
fn json_that_is_not_an_envelope_is_moved_aside_too() {
    let r = Relay::new();
    r.add(&["q"]);
    let not_envelope = "00000000000000000000000001";
    let wrong_name = "00000000000000000000000002";
    r.write_file(
        &format!("mailboxes/q/new/{not_envelope}.json"),
        r#"{"hello": "world"}"#,
    );
    // A valid envelope whose id is not its file name.
    let env = dorkos_envelope(ID, "q", &json!(1));
    r.write_file(
        &format!("mailboxes/q/new/{wrong_name}.json"),
        env.to_string(),
    );

    r.cmd(["recv", "q"])
        .code(66)
        .stderr_has(&[not_envelope, wrong_name]);
    assert!(r.files("q", "new").is_empty());
    assert!(r.files("q", "cur").is_empty());
    assert_eq!(r.files("q", "failed").len(), 4);
    for id in [not_envelope, wrong_name] {
        let sidecar = r.read_json(&format!("mailboxes/q/failed/{id}.reason.json"));
        assert_eq!(sidecar["code"], "malformed", "{id}");
    }
}

#[test]
fn dorkos_mailbox_layout_is_accepted() {
    let r = Relay::new();
    r.add(&["relay.agent.a"]);
    // A mailbox DorkOS registered (0755 under umask 022) with an owner marker.
    for sub in ["tmp", "new", "cur", "failed"] {
        r.write_file(&format!("mailboxes/relay.agent.b/{sub}/.keep"), "");
    }
    r.write_file("mailboxes/relay.agent.b/.owner", "relay.agent.owner");
    for dir in ["", "/tmp", "/new", "/cur", "/failed"] {
        let path = r.path(&format!("mailboxes/relay.agent.b{dir}"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap_or_default();
    }
    // A dead-letter directory DorkOS made for an unmatched pattern.
    let dead = dorkos_envelope(ID, "relay.nobody.>", &json!("x"));
    r.write_file(
        &format!("mailboxes/relay.nobody.>/failed/{ID}.json"),
        dead.to_string(),
    );

    let list = r.cmd(["endpoints", "--json"]).success().json();
    let subjects: Vec<&str> = list["endpoints"]
        .as_array()
        .map(|a| a.iter().filter_map(|e| e["subject"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(subjects, ["relay.agent.a", "relay.agent.b"]);

    let report = r.cmd(["send", "relay.>", "hi", "--json"]).success().json();
    assert_eq!(
        report["deliveredTo"],
        json!(["relay.agent.a", "relay.agent.b"])
    );
    assert_eq!(r.files("relay.nobody.>", "failed"), [format!("{ID}.json")]);
    r.cmd(["recv", "relay.agent.b"]).success().stdout_is("hi\n");
}
