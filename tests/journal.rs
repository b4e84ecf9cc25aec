//! A send never opens the index: its rows and events go to `journal` and its
//! rate-limit and breaker state to `state.json`. Every index user ingests the
//! journal first, replays change nothing, and damaged files cost no message.

use std::fs;

use crate::harness::Relay;

const T: u64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

fn world(config: &str) -> Relay {
    let r = Relay::new();
    r.write_file("config.json", config);
    r.add(&["agent.b"]);
    r
}

#[test]
fn a_send_leaves_the_index_alone_and_the_next_reader_ingests_its_journal() {
    let r = world(r#"{"reliability":{"rateLimit":{"maxPerWindow":10,"softLimitRatio":0.1}}}"#);
    let db = r.path("relay.db");
    let before = fs::read(&db).ok();
    let id = r
        .cmd(["send", "agent.b", "1", "--from", "agent.a"])
        .at(T)
        .success()
        .stderr_has(&["at 10% of its rate limit"])
        .stdout
        .trim()
        .to_string();
    assert_eq!(fs::read(&db).ok(), before, "send wrote the index");
    let journal = fs::read_to_string(r.path("journal")).expect("journal");
    assert!(journal.contains(&id), "{journal}");
    assert!(journal.contains("rate_limit_soft"), "{journal}");

    // The next index user moves it in: the row and the event, and empties it.
    let t = r.cmd(["trace", &id, "--json"]).at(T + 1).success().json();
    assert_eq!(t["spans"][0]["state"], "pending", "{t}");
    assert_eq!(
        fs::metadata(r.path("journal")).expect("journal").len(),
        0,
        "ingested journal not emptied"
    );
    assert_eq!(r.events_of(T + 2, "rate_limit_soft").len(), 1);
}

#[test]
fn replaying_an_ingested_journal_adds_nothing() {
    let r = world("{}");
    r.cmd([
        "send",
        "agent.b",
        "1",
        "--from",
        "agent.a",
        "--priority",
        "background",
    ])
    .at(T)
    .success();
    // Fill the mailbox past the background lane so a send also records an event.
    r.write_file(
        "config.json",
        r#"{"reliability":{"backpressure":{"maxMailboxSize":2,"shedBackgroundAt":0.5}}}"#,
    );
    r.cmd([
        "send",
        "agent.b",
        "2",
        "--from",
        "agent.a",
        "--priority",
        "background",
    ])
    .at(T + 1)
    .code(75);
    let saved = fs::read(r.path("journal")).expect("journal");
    assert!(!saved.is_empty());
    let first = r.events(T + 2);
    let rows = r.cmd(["metrics", "--json"]).at(T + 2).success().json();
    // A crash between the index commit and the truncation: the same records again.
    fs::write(r.path("journal"), &saved).expect("restore journal");
    assert_eq!(r.events(T + 3), first, "a replay added events");
    let again = r.cmd(["metrics", "--json"]).at(T + 2).success().json();
    assert_eq!(again["sent"], rows["sent"], "a replay added rows: {again}");
}

#[test]
fn a_torn_journal_line_is_skipped_with_a_warning_and_the_rest_ingested() {
    let r = world("{}");
    let id = r.send("agent.b", "kept");
    let mut journal = fs::read(r.path("journal")).expect("journal");
    journal.extend_from_slice(b"{\"t\":\"sent\",\"at\":17");
    fs::write(r.path("journal"), journal).expect("tear");
    let out = r.cmd(["trace", &id, "--json"]).run();
    let out = out.success().stderr_has(&["skipped 1 torn line"]);
    assert_eq!(out.json()["spans"][0]["state"], "pending");
    r.cmd(["recv", "agent.b"]).success().stdout_is("kept\n");
}

#[test]
fn a_damaged_state_file_is_set_aside_and_limits_start_over() {
    let r = world(r#"{"reliability":{"rateLimit":{"maxPerWindow":1}}}"#);
    r.cmd(["send", "agent.b", "1", "--from", "agent.a"])
        .at(T)
        .success();
    r.cmd(["send", "agent.b", "2", "--from", "agent.a"])
        .at(T)
        .code(75);
    r.write_file("state.json", "{\"buckets\":{\"agent.a\":{\"tok");
    r.cmd(["send", "agent.b", "3", "--from", "agent.a"])
        .at(T)
        .success()
        .stderr_has(&["state.json was damaged", "start over", "state.json.damaged"]);
    assert!(r.path("state.json.damaged").exists());
    assert_eq!(r.files("agent.b", "new").len(), 2, "no message lost");
}

#[test]
fn buckets_and_breakers_survive_between_processes_in_the_state_file() {
    let r = world(r#"{"reliability":{"circuitBreaker":{"failureThreshold":1}}}"#);
    let id = r
        .cmd(["send", "agent.b", "1", "--from", "agent.a"])
        .at(T)
        .success()
        .stdout
        .trim()
        .to_string();
    r.cmd(["recv", "agent.b"]).at(T).success();
    r.cmd(["nack", "agent.b", &id]).at(T).success();
    let state = r.read_json("state.json");
    assert_eq!(
        state["breakers"]["agent.a"]["agent.b"]["phase"], "open",
        "{state}"
    );
    assert!(state["buckets"]["agent.a"]["tokens"].is_number(), "{state}");
    r.cmd(["send", "agent.b", "2", "--from", "agent.a"])
        .at(T + 1)
        .code(75)
        .stderr_has(&["circuit open for agent.a -> agent.b"]);
}
