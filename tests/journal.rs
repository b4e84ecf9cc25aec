//! A send never opens the index: its rows and events go to `journal` and its
//! rate-limit and breaker state to the slots `state.0`/`state.1`. Every index user ingests the
//! journal first, replays change nothing, and damaged files cost no message.

use std::fs;

use serde_json::Value;

use crate::harness::{Relay, T};

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
        .stderr_has(&["has 9 of 10 rate-limit tokens left"])
        .id();
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
    // A send killed mid-append leaves a line without its end...
    let mut journal = fs::read(r.path("journal")).expect("journal");
    journal.extend_from_slice(b"{\"t\":\"sent\",\"at\":17");
    fs::write(r.path("journal"), journal).expect("tear");
    // ...which a reader leaves alone (it could be a send still writing)...
    let t = r.cmd(["trace", &id, "--json"]).success().stderr_empty();
    assert_eq!(t.json()["spans"][0]["state"], "pending");
    // ...until the next append starts a line of its own: then it is skipped.
    let next = r.send("agent.b", "next");
    let out = r.cmd(["trace", &next, "--json"]).run();
    let out = out.success().stderr_has(&["skipped 1 torn line"]);
    assert_eq!(out.json()["spans"][0]["state"], "pending");
    assert_eq!(
        fs::metadata(r.path("journal")).expect("journal").len(),
        0,
        "fully ingested journal not emptied"
    );
    r.cmd(["recv", "agent.b", "-n", "2"])
        .success()
        .stdout_is("kept\nnext\n");
}

#[test]
fn a_reader_never_waits_for_an_appending_send_and_reads_each_line_once() {
    let r = world("{}");
    let a = r.send("agent.b", "a");
    // A send holds the journal (shared lock) as if mid-append: a reader
    // still ingests (without waiting), but leaves the journal for later.
    let held = fs::File::open(r.path("journal")).expect("journal");
    held.lock_shared().expect("shared lock");
    let t = r.cmd(["trace", &a, "--json"]).success().json();
    assert_eq!(t["spans"][0]["state"], "pending", "{t}");
    let before = fs::metadata(r.path("journal")).expect("journal").len();
    assert!(before > 0, "emptied while a send held it");
    drop(held);
    // The next reader reads only what is new, then empties it.
    let b = r.send("agent.b", "b");
    let m = r.cmd(["metrics", "--json"]).success().json();
    assert_eq!(m["totalMessages"], 2, "both sends indexed: {m}");
    assert_eq!(fs::metadata(r.path("journal")).expect("journal").len(), 0);
    r.cmd(["trace", &b]).success();
}

/// The newest valid state slot (`relay-state GEN LEN SUM` header, then
/// JSON): its file name and state.
fn newest_state(r: &Relay) -> (&'static str, Value) {
    ["state.0", "state.1"]
        .into_iter()
        .filter_map(|f| {
            let raw = fs::read_to_string(r.path(f)).ok()?;
            let (header, rest) = raw.split_once('\n')?;
            let generation: u64 = header.split(' ').nth(1)?.parse().ok()?;
            let state = serde_json::from_str::<Value>(rest.trim_end()).ok()?;
            Some((generation, f, state))
        })
        .max_by_key(|(g, _, _)| *g)
        .map(|(_, f, v)| (f, v))
        .unwrap_or_default()
}

/// `relay send agent.b PAYLOAD --from agent.a` at T, expecting `code`;
/// returns the command's output.
fn send_a<'a>(r: &'a Relay, payload: &str, code: i32) -> crate::harness::Output<'a> {
    r.cmd(["send", "agent.b", payload, "--from", "agent.a"])
        .at(T)
        .code(code)
}

#[test]
fn a_torn_state_slot_falls_back_to_the_state_before_it() {
    let r = world(r#"{"reliability":{"rateLimit":{"maxPerWindow":2}}}"#);
    send_a(&r, "1", 0);
    send_a(&r, "2", 0);
    // The second send's slot is torn (a kill mid-write): the first send's
    // state is what is left, one token, so exactly one more send passes.
    let (newest, state) = newest_state(&r);
    assert!(state["buckets"]["agent.a"].is_object(), "{state}");
    let mut raw = fs::read(r.path(newest)).expect("slot");
    let at = raw.len() / 2;
    raw[at] ^= 0x01;
    fs::write(r.path(newest), raw).expect("tear");
    send_a(&r, "3", 0);
    send_a(&r, "4", 75);
}

#[test]
fn damaged_state_slots_start_over_with_a_warning_and_lose_no_message() {
    let r = world(r#"{"reliability":{"rateLimit":{"maxPerWindow":1}}}"#);
    send_a(&r, "1", 0);
    send_a(&r, "2", 75);
    r.write_file("state.0", "{\"buckets\":{\"agent.a\":{\"tok");
    r.write_file("state.1", "garbage");
    send_a(&r, "3", 0).stderr_has(&["state.0", "state.1", "both damaged", "start over"]);
    assert_eq!(r.files("agent.b", "new").len(), 2, "no message lost");
}

#[test]
fn buckets_and_breakers_survive_between_processes_in_the_state_file() {
    let r = world(r#"{"reliability":{"circuitBreaker":{"failureThreshold":1}}}"#);
    let id = r
        .cmd(["send", "agent.b", "1", "--from", "agent.a"])
        .at(T)
        .success()
        .id();
    r.cmd(["recv", "agent.b"]).at(T).success();
    r.cmd(["nack", "agent.b", &id]).at(T).success();
    let (_, state) = newest_state(&r);
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

/// The consumer's side of the journal (issue 12): plain claims and acks
/// open no SQLite; what they did reaches `trace`, `metrics` and `status`
/// through the next reader.
#[test]
fn recv_and_ack_leave_the_index_alone_and_the_next_reader_sees_them() {
    let r = world("{}");
    let ids: Vec<String> = (0..4).map(|i| r.send("agent.b", &i.to_string())).collect();
    r.cmd(["status"]).at(T).success();
    // The first consumer learns from the index that no priority is there.
    r.cmd(["recv", "agent.b", "--ack"])
        .at(T)
        .success()
        .stdout_is("0\n");
    let files = |r: &Relay| ["relay.db", "relay.db-wal"].map(|f| fs::read(r.path(f)).ok());
    let before = files(&r);
    r.cmd(["recv", "agent.b", "-n", "2", "--lease", "60s"])
        .at(T + 10)
        .success()
        .stdout_is("1\n2\n");
    r.cmd(["ack", "agent.b", &ids[1]]).at(T + 20).success();
    r.cmd(["recv", "agent.b", "--ack", "--json"])
        .at(T + 30)
        .success();
    assert!(files(&r) == before, "a consumer wrote the index");
    let journal = fs::read_to_string(r.path("journal")).expect("journal");
    for t in [r#""t":"claimed""#, r#""t":"acked""#] {
        assert!(journal.contains(t), "no {t} in the journal: {journal}");
    }

    let span = |id: &str| {
        let t = r.cmd(["trace", id, "--json"]).at(T + 40).success().json();
        t["spans"][0].clone()
    };
    for (id, state) in [
        (&ids[0], "acked"),
        (&ids[1], "acked"),
        (&ids[2], "claimed"),
        (&ids[3], "acked"),
    ] {
        let s = span(id);
        assert_eq!(s["state"], state, "{id}: {s}");
        assert!(s["deliveredAt"].is_string(), "{id}: {s}");
        assert_eq!(s["processedAt"].is_string(), state == "acked", "{id}: {s}");
    }
    assert_eq!(
        fs::metadata(r.path("journal"))
            .map(|m| m.len())
            .unwrap_or(0),
        0,
        "ingested journal not emptied"
    );
    let m = r.cmd(["metrics", "--json"]).at(T + 40).success().json();
    assert_eq!(
        (
            &m["deliveredCount"],
            &m["inFlightCount"],
            &m["pendingCount"]
        ),
        (&Value::from(3), &Value::from(1), &Value::from(0)),
        "{m}"
    );
    let s = r.cmd(["status", "--json"]).at(T + 40).success().json();
    assert!(s.to_string().contains("\"depth\":1"), "{s}");
    // The claim's lease, journaled, counts when it runs out.
    r.cmd(["recv", "agent.b", "--json"])
        .at(T + 10 + 61_000)
        .success();
    assert_eq!(r.events_of(T + 80_000, "lease_expired").len(), 1);
}

#[test]
fn a_home_written_by_the_previous_version_is_ingested_and_replayed() {
    // Files in the formats relay wrote before the one log format: the
    // journal as bare JSON lines, a batch log `relay-batch-log 1`.
    const A: &str = "01JZ0000000000000000000001"; // in new/, its row only in the journal
    const B: &str = "01JZ0000000000000000000002"; // lost with the power: only in the batch log
    const C: &str = "01JZ0000000000000000000003"; // cancelled in the batch log
    let r = world("{}");
    r.cmd(["status"]).at(T).success();
    let body = |id: &str| {
        serde_json::to_string_pretty(&crate::harness::dorkos_envelope(
            id,
            "agent.b",
            &serde_json::json!(id),
        ))
        .expect("json")
    };
    r.write_file(&format!("mailboxes/agent.b/new/{A}.json"), body(A));
    let sent = serde_json::json!({
        "t": "sent", "at": T - 3_600_000, "endpoint": "agent.b", "id": A, "subject": "agent.b",
        "sender": "agent:legacy", "traceId": A, "expiresAt": 4_102_444_800_000_u64,
        "priority": 2, "probe": false, "code": null, "reason": null
    });
    let event = serde_json::json!({
        "t": "event", "key": "01JZOLDJOURNAL.1", "at": T, "kind": "rate_limit_soft",
        "sender": "agent:legacy", "endpoint": null, "messageId": null, "detail": { "used": 9 }
    });
    r.write_file("journal", format!("\n{sent}\n{event}\n"));
    let mut log = String::from("relay-batch-log 1 boot-before\n");
    for id in [B, C] {
        let b = body(id);
        log.push_str(&format!("agent.b {id} {}\n{b}\n", b.len()));
    }
    log.push_str(&format!("agent.b {C} -\n"));
    let log_path = "batches/01JZ0000000000000000000009.log";
    r.write_file(log_path, log);
    // This version appends its records after the old lines: one file, two
    // formats, one reader.
    let new = r
        .cmd(["send", "agent.b", "new", "--from", "agent.a"])
        .env("RELAY_FAKE_BOOT_ID", "boot-after")
        .at(T + 1)
        .success()
        .id();
    let journal = fs::read_to_string(r.path("journal")).expect("journal");
    assert!(
        journal.starts_with(&format!("\n{sent}\n{event}\n")) && journal.contains("\n@"),
        "{journal}"
    );

    // The next reader, on the next boot: ingests the journal, replays the log.
    r.cmd(["status"])
        .env("RELAY_FAKE_BOOT_ID", "boot-after")
        .at(T + 2)
        .success()
        .stderr_has(&["restored 1 message(s)"]);
    assert!(!r.path(log_path).exists(), "replayed, then retired");
    assert_eq!(
        fs::metadata(r.path("journal")).expect("journal").len(),
        0,
        "ingested journal not emptied"
    );
    let soft = r.events_of(T + 3, "rate_limit_soft");
    assert_eq!(soft.len(), 1, "{soft:?}");
    assert_eq!(soft[0]["detail"]["used"], 9, "{soft:?}");
    let restored = r.events_of(T + 3, "restored");
    assert_eq!(restored.len(), 1, "{restored:?}");
    assert_eq!(restored[0]["messageId"], B);
    let sent_at = |id: &str| {
        let t = r.cmd(["trace", id, "--json"]).at(T + 3).success().json();
        assert_eq!(t["spans"][0]["state"], "pending", "{t}");
        t
    };
    // A's row is the journal's (sent an hour before its envelope's
    // createdAt), not one made from the file when next seen.
    let t = sent_at(A);
    assert_eq!(t["spans"][0]["sentAt"], "2025-12-31T23:00:00.000Z", "{t}");
    sent_at(B);
    sent_at(&new);
    let mut got: Vec<String> = r
        .cmd(["recv", "agent.b", "--json", "-n", "5"])
        .env("RELAY_FAKE_BOOT_ID", "boot-after")
        .at(T + 4)
        .success()
        .json_lines()
        .iter()
        .map(|m| m["id"].as_str().expect("id").to_owned())
        .collect();
    got.sort();
    let mut want = vec![A.to_owned(), B.to_owned(), new];
    want.sort();
    assert_eq!(got, want, "the cancelled copy stays unsent");
    r.cmd(["doctor"])
        .env("RELAY_FAKE_BOOT_ID", "boot-after")
        .at(T + 5)
        .success();
}
