//! `relay endpoints`: add creates the Maildir, list reports depth and
//! activity, remove refuses to drop messages without `--force`.

use serde_json::json;

use crate::harness::Relay;

#[test]
fn add_creates_the_four_maildir_subdirectories() {
    let r = Relay::new();
    let report = r
        .cmd([
            "endpoints",
            "add",
            "agent.backend",
            "agent.frontend",
            "--json",
        ])
        .success()
        .json();
    assert_eq!(report["added"], json!(["agent.backend", "agent.frontend"]));
    for ep in ["agent.backend", "agent.frontend"] {
        for sub in ["tmp", "new", "cur", "failed"] {
            assert!(r.mailbox(ep).join(sub).is_dir(), "{ep}/{sub}");
        }
    }
}

#[test]
fn adding_an_existing_endpoint_is_not_an_error() {
    let r = Relay::new();
    r.add(&["a.x"]);
    let id = r.send("a.x", "kept");
    let report = r
        .cmd(["endpoints", "add", "a.x", "a.y", "--json"])
        .success()
        .json();
    assert_eq!(report["added"], json!(["a.y"]));
    assert_eq!(report["existing"], json!(["a.x"]));
    r.cmd(["endpoints", "add", "a.x"])
        .success()
        .stderr_has(&["already exists"]);
    assert_eq!(r.files("a.x", "new"), [format!("{id}.json")]);
}

#[test]
fn list_json_reports_depth_per_subdirectory() {
    let r = Relay::new();
    r.cmd(["config", "set", "retention.days", "7"]).success();
    r.cmd(["endpoints", "--json"])
        .success()
        .stdout_is("{\"endpoints\":[]}\n");
    r.add(&["b.y", "a.x"]);
    for i in 0..3 {
        r.send("a.x", &format!("m{i}"));
    }
    r.cmd(["recv", "a.x"]).success();
    let list = r.cmd(["endpoints", "--json"]).success().json();
    let eps = list["endpoints"].as_array().cloned().unwrap_or_default();
    assert_eq!(eps.len(), 2, "{list}");
    assert_eq!(eps[0]["subject"], "a.x", "sorted by subject");
    assert_eq!(eps[0]["new"], 2);
    assert_eq!(eps[0]["cur"], 1);
    assert_eq!(eps[0]["failed"], 0);
    assert_eq!(eps[0]["depth"], 3, "depth is new + cur");
    assert!(
        eps[0]["lastActivity"]
            .as_str()
            .is_some_and(|s| s.ends_with('Z'))
    );
    assert_eq!(eps[1]["subject"], "b.y");
    assert_eq!(eps[1]["depth"], 0);
}

#[test]
fn list_for_people_is_a_table() {
    let r = Relay::new();
    r.cmd(["config", "set", "retention.days", "7"]).success();
    r.cmd(["endpoints"])
        .success()
        .stdout_is("")
        .stderr_has(&["relay endpoints add"]);
    r.add(&["a.x"]);
    r.send("a.x", "m");
    let out = r.cmd(["endpoints"]).success();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", out.stdout);
    assert!(lines[0].starts_with("ENDPOINT"), "{}", out.stdout);
    assert!(lines[1].starts_with("a.x "), "{}", out.stdout);
}

#[test]
fn remove_refuses_an_endpoint_with_messages_unless_forced() {
    let r = Relay::new();
    r.add(&["a.x", "empty"]);
    r.send("a.x", "precious");
    r.cmd(["endpoints", "remove", "a.x"])
        .code(65)
        .stderr_has(&["'a.x'", "--force"]);
    assert_eq!(r.files("a.x", "new").len(), 1);

    let report = r
        .cmd(["endpoints", "remove", "a.x", "--force", "--json"])
        .success()
        .json();
    assert_eq!(report["deletedMessages"], 1);
    assert!(!r.mailbox("a.x").exists());

    r.cmd(["endpoints", "remove", "empty"]).success();
    assert!(!r.mailbox("empty").exists());
    assert!(r.mailbox_tree().is_empty(), "{:?}", r.mailbox_tree());
}

#[test]
fn remove_unknown_endpoint_exits_69() {
    let r = Relay::new();
    r.add(&["a.x"]);
    r.cmd(["endpoints", "remove", "nope"])
        .code(69)
        .stderr_has(&["'nope'", "a.x"]);
}
