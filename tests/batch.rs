//! `relay send --batch`: NDJSON requests on stdin, the same checks per line,
//! one group commit per chunk (one fsync of the batch log, files written on
//! two threads), one result line per request, in order; and the batch log's
//! retirement and replay after a restart.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::harness::{Relay, T, is_ulid};

fn ndjson(lines: &[Value]) -> String {
    lines.iter().map(|l| format!("{l}\n")).collect()
}

fn world(config: &str, endpoints: &[&str]) -> Relay {
    let r = Relay::new();
    r.write_file("config.json", config);
    r.add(endpoints);
    r
}

#[test]
fn a_large_durable_batch_delivers_every_line_once_in_order() {
    const N: usize = 1_500; // enough for both threads and three chunks
    let r = world(
        r#"{"reliability":{"rateLimit":{"enabled":false},"backpressure":{"maxMailboxSize":100000}}}"#,
        &["agent.b"],
    );
    let input: Vec<Value> = (0..N)
        .map(|i| json!({ "subject": "agent.b", "payload": { "n": i } }))
        .collect();
    let out = r
        .cmd(["send", "--batch", "--from", "agent.a"])
        .stdin(ndjson(&input))
        .at(T)
        .success();
    let ids: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(ids.len(), N, "one id per line");
    assert!(ids.iter().all(|id| is_ulid(id)), "{:?}", &ids[..3]);
    assert_eq!(ids.iter().collect::<BTreeSet<_>>().len(), N, "ids unique");
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, ids, "ids follow the input order (FIFO)");
    let files: BTreeSet<String> = r.files("agent.b", "new").into_iter().collect();
    let want: BTreeSet<String> = ids.iter().map(|id| format!("{id}.json")).collect();
    assert_eq!(files, want, "exactly the printed ids are in new/");
    assert!(r.files("agent.b", "tmp").is_empty(), "nothing left in tmp/");

    // Each file is the request it answers, and recv hands them out in order.
    let got = r
        .cmd(["recv", "agent.b", "--json", "-n", "5"])
        .at(T + 1)
        .success()
        .json_lines();
    let ns: Vec<&Value> = got.iter().map(|m| &m["payload"]["n"]).collect();
    assert_eq!(
        ns,
        [0, 1, 2, 3, 4].map(Value::from).iter().collect::<Vec<_>>()
    );
    assert_eq!(got[0]["id"], ids[0]);
}

#[test]
fn fan_out_and_no_fsync_batches_deliver_to_every_matching_endpoint() {
    const N: usize = 600;
    let r = world(
        r#"{"reliability":{"rateLimit":{"enabled":false},"backpressure":{"maxMailboxSize":100000}}}"#,
        &["team.a", "team.b"],
    );
    let input: Vec<Value> = (0..N)
        .map(|i| json!({ "subject": "team.*", "payload": i }))
        .collect();
    for flags in [
        &["send", "--batch"][..],
        &["send", "--batch", "--no-fsync"][..],
    ] {
        let out = r.cmd(flags).stdin(ndjson(&input)).at(T).success();
        assert_eq!(out.stdout.lines().count(), N, "{flags:?}");
    }
    assert_eq!(r.files("team.a", "new").len(), 2 * N);
    assert_eq!(r.files("team.b", "new").len(), 2 * N);
}

#[test]
fn bad_lines_fail_alone_with_their_line_number_and_the_first_code() {
    let r = world("{}", &["agent.b"]);
    let input = [
        json!({ "subject": "agent.b", "payload": "one" }).to_string(),
        "{not json".to_string(),
        json!({ "subject": "agent..b", "payload": "bad subject" }).to_string(),
        json!({ "subject": "agent.nobody", "payload": "no match" }).to_string(),
        json!({ "subject": "agent.b", "payload": "five" }).to_string(),
    ]
    .join("\n");
    let out = r
        .cmd(["send", "--batch", "--json"])
        .stdin(input)
        .at(T)
        .code(65);
    let lines = out.json_lines();
    assert_eq!(lines.len(), 5, "{}", out.stdout);
    assert!(is_ulid(lines[0]["id"].as_str().unwrap_or_default()));
    assert_eq!(
        (lines[1]["line"].clone(), lines[1]["error"]["code"].clone()),
        (2.into(), 65.into())
    );
    assert_eq!(
        (lines[2]["line"].clone(), lines[2]["error"]["code"].clone()),
        (3.into(), 65.into())
    );
    assert_eq!(
        (lines[3]["line"].clone(), lines[3]["error"]["code"].clone()),
        (4.into(), 69.into())
    );
    assert!(is_ulid(lines[4]["id"].as_str().unwrap_or_default()));
    let delivered: Vec<Value> = r
        .cmd(["recv", "agent.b", "--json", "-n", "10"])
        .at(T + 1)
        .success()
        .json_lines();
    let payloads: Vec<&Value> = delivered.iter().map(|m| &m["payload"]).collect();
    assert_eq!(payloads, [&json!("one"), &json!("five")]);
    // The unmatched line was dead-lettered under its subject.
    assert_eq!(
        r.files("agent.nobody", "failed").len(),
        2,
        "dead letter + reason"
    );
}

#[test]
fn a_batch_is_rate_limited_and_deduplicated_per_line() {
    let r = world(
        r#"{"reliability":{"rateLimit":{"maxPerWindow":3,"windowSecs":60}}}"#,
        &["agent.b"],
    );
    let mut input: Vec<Value> = (0..5)
        .map(|i| json!({ "subject": "agent.b", "payload": i, "from": "agent.a" }))
        .collect();
    input.push(json!({ "subject": "agent.b", "payload": "k", "from": "agent.z", "idempotencyKey": "job-1" }));
    input.push(json!({ "subject": "agent.b", "payload": "k", "from": "agent.z", "idempotencyKey": "job-1" }));
    let out = r
        .cmd(["send", "--batch", "--json"])
        .stdin(ndjson(&input))
        .at(T)
        .code(75);
    let lines = out.json_lines();
    assert_eq!(lines.len(), 7, "{}", out.stdout);
    let refused: Vec<i64> = lines
        .iter()
        .filter_map(|l| l["line"].as_i64().filter(|_| l["error"]["code"] == 75))
        .collect();
    assert_eq!(refused, [4, 5], "the bucket of 3 admits exactly 3");
    assert_eq!(lines[6]["duplicate"], true, "{}", lines[6]);
    assert_eq!(lines[6]["id"], lines[5]["id"]);
    assert_eq!(r.files("agent.b", "new").len(), 4);
}

#[test]
fn a_send_moves_a_large_journal_into_the_index_itself() {
    // Nothing but sends ever run here (a DorkOS consumer could read the
    // Maildir directly): the journal must not grow without bound.
    const N: usize = 5_000; // ~1.5 MB of journal, past a 1 MiB bound
    let input: Vec<Value> = (0..N)
        .map(|i| json!({ "subject": "agent.b", "payload": { "n": i, "text": "x".repeat(100) } }))
        .collect();
    let limits =
        r#""reliability":{"rateLimit":{"enabled":false},"backpressure":{"maxMailboxSize":100000}}"#;
    let r = world(
        &format!(r#"{{"index":{{"journalMaxBytes":1048576}},{limits}}}"#),
        &["agent.b"],
    );
    r.cmd(["send", "--batch", "--no-fsync"])
        .stdin(ndjson(&input))
        .at(T)
        .success();
    let journal = std::fs::metadata(r.path("journal")).map_or(0, |m| m.len());
    assert!(journal < 1 << 20, "journal left at {journal} bytes");
    assert!(
        r.path("relay.db").exists(),
        "the send did not open the index"
    );
    let m = r.cmd(["metrics", "--json"]).at(T + 1).success().json();
    assert_eq!(m["totalMessages"], N, "{m}");

    // Under the default bound (16 MiB) the same batch leaves it for a reader.
    let r = world(&format!("{{{limits}}}"), &["agent.b"]);
    r.cmd(["send", "--batch", "--no-fsync"])
        .stdin(ndjson(&input))
        .at(T)
        .success();
    assert!(!r.path("relay.db").exists(), "a send opened the index");
}

/// The batch logs in the home: (file name, contents).
fn batch_logs(r: &Relay) -> Vec<(String, String)> {
    let Ok(rd) = std::fs::read_dir(r.path("batches")) else {
        return Vec::new();
    };
    rd.map(|e| {
        let e = e.expect("batches/ entry");
        let text = std::fs::read_to_string(e.path()).expect("readable log");
        (e.file_name().to_string_lossy().into_owned(), text)
    })
    .collect()
}

/// The records of a batch log's text (format `relay-log 2`: after the
/// header, `@<head length> <body length> <checksum>` lines, each followed
/// by its JSON head and body): (head, body), in order.
fn log_records(text: &str) -> Vec<(Value, String)> {
    let mut rest = text.split_once('\n').expect("a header line").1;
    let mut out = Vec::new();
    while let Some(at) = rest.find("\n@") {
        let (line, after) = rest[at + 2..].split_once('\n').expect("a frame line");
        let mut w = line.split(' ');
        let head: usize = w.next().and_then(|n| n.parse().ok()).expect("head length");
        let body: usize = w.next().and_then(|n| n.parse().ok()).expect("body length");
        assert_eq!(w.next().map(str::len), Some(16), "a checksum: {line}");
        let json: Value = serde_json::from_str(&after[..head]).expect("a JSON head");
        out.push((json, after[head..head + body].to_owned()));
        assert_eq!(&after[head + body..head + body + 1], "\n", "closed");
        rest = &after[head + body..];
    }
    out
}

/// The real clock in ms, `ahead_ms` from now: a log's age is measured
/// against its file's (real) modification time.
fn real_now_plus(ahead_ms: u64) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970");
    u64::try_from(now.as_millis()).expect("ms fit") + ahead_ms
}

/// The boot id relay reads: a test restarts the machine by changing it.
const BOOT: &str = "RELAY_FAKE_BOOT_ID";

/// `relay send --batch [flags]` of `n` requests to `agent.b` (payloads
/// 0..n) on boot `boot`, at `T`; the printed ids.
fn batch_on(r: &Relay, boot: &str, n: usize, flags: &[&str]) -> Vec<String> {
    let input: Vec<Value> = (0..n)
        .map(|i| json!({ "subject": "agent.b", "payload": i }))
        .collect();
    r.cmd(["send", "--batch"])
        .args(flags)
        .stdin(ndjson(&input))
        .env(BOOT, boot)
        .at(T)
        .success()
        .stdout
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_durable_batch_is_logged_then_the_log_is_retired_once_on_disk() {
    let r = world("{}", &["agent.b"]);
    batch_on(&r, "boot-a", 3, &["--no-fsync"]);
    assert!(batch_logs(&r).is_empty(), "--no-fsync writes no log");

    let ids = batch_on(&r, "boot-a", 3, &[]);
    let logs = batch_logs(&r);
    assert_eq!(logs.len(), 1, "one log per batch");
    let (name, text) = &logs[0];
    assert!(text.starts_with("relay-log 2 boot-a\n"), "{text}");
    let records = log_records(text);
    assert_eq!(records.len(), ids.len(), "{text}");
    for (id, (head, body)) in ids.iter().zip(&records) {
        let file =
            std::fs::read_to_string(r.mailbox("agent.b").join("new").join(format!("{id}.json")))
                .expect("delivered");
        assert_eq!(
            head,
            &json!({ "t": "message", "endpoint": "agent.b", "id": id })
        );
        assert_eq!(body, &file, "{id} is in the log as delivered");
    }

    // Young, and then held by a batch still writing it: left alone.
    r.cmd(["status"]).env(BOOT, "boot-a").success();
    assert_eq!(batch_logs(&r).len(), 1, "a log younger than 60 s stays");
    let held = std::fs::File::open(r.path("batches").join(name)).expect("log");
    held.lock().expect("flock");
    r.cmd(["status"])
        .env(BOOT, "boot-a")
        .at(real_now_plus(61_000))
        .success();
    assert_eq!(batch_logs(&r).len(), 1, "a locked log is never retired");
    drop(held);

    // Old and of this boot: retired without replaying anything (a message
    // gone from the mailbox on this boot was taken by someone, not lost).
    let first = &ids[0];
    std::fs::remove_file(
        r.mailbox("agent.b")
            .join("new")
            .join(format!("{first}.json")),
    )
    .expect("remove");
    r.cmd(["status"])
        .env(BOOT, "boot-a")
        .at(real_now_plus(61_000))
        .success()
        .stderr_empty();
    assert!(batch_logs(&r).is_empty(), "retired");
    assert_eq!(r.files("agent.b", "new").len(), 5, "nothing restored");
}

#[test]
fn after_a_restart_the_batch_log_restores_what_did_not_reach_the_disk() {
    let r = world("{}", &["agent.b"]);
    let ids = batch_on(&r, "boot-a", 4, &["--from", "agent.a"]);
    let new = r.mailbox("agent.b").join("new");
    let path = |id: &str| new.join(format!("{id}.json"));
    let original: Vec<Vec<u8>> = ids
        .iter()
        .map(|id| std::fs::read(path(id)).expect("delivered"))
        .collect();

    // Message 2 is received and acked before the power goes.
    let got = r
        .cmd(["recv", "agent.b", "--json", "-n", "3"])
        .env(BOOT, "boot-a")
        .at(T + 1)
        .success()
        .json_lines();
    assert_eq!(got.len(), 3);
    r.cmd(["ack", "agent.b", &ids[2]])
        .env(BOOT, "boot-a")
        .at(T + 2)
        .success();
    // The power loss: message 0's file never reached the disk, message 1's
    // name did but its data did not; a batch killed mid-append left a
    // partial entry at the end of the log.
    let cur = r.mailbox("agent.b").join("cur");
    std::fs::remove_file(cur.join(format!("{}.json", ids[0]))).expect("lose 0");
    std::fs::write(cur.join(format!("{}.json", ids[1])), b"").expect("empty 1");
    let (log, _) = batch_logs(&r).pop().expect("a log");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(r.path("batches").join(&log))
        .expect("log");
    std::io::Write::write_all(&mut f, b"agent.b 01KXXXXXXXXXXXXXXXXXXXXXXX 999\n{\"id\"")
        .expect("append");

    let out = r
        .cmd(["status"])
        .env(BOOT, "boot-b")
        .at(T + 3)
        .success()
        .stderr_has(&["restored 2 message(s)", "partial line"]);
    assert!(
        batch_logs(&r).is_empty(),
        "replayed and removed: {}",
        out.stderr
    );
    assert_eq!(
        std::fs::read(path(&ids[0])).expect("0 back in new/"),
        original[0]
    );
    assert_eq!(
        std::fs::read(cur.join(format!("{}.json", ids[1]))).expect("1 in cur/"),
        original[1],
        "rewritten where it was"
    );
    assert!(
        !path(&ids[2]).exists() && !cur.join(format!("{}.json", ids[2])).exists(),
        "acked stays acked"
    );
    assert_eq!(
        std::fs::read(path(&ids[3])).expect("3 untouched"),
        original[3]
    );

    // Each is in the event log, for whoever looks later.
    let events = r
        .cmd(["events", "--json", "--kind", "restored"])
        .env(BOOT, "boot-b")
        .at(T + 4)
        .success()
        .json_lines();
    let mut seen: Vec<(Value, Value, Value)> = events
        .iter()
        .map(|e| {
            (
                e["messageId"].clone(),
                e["detail"]["into"].clone(),
                e["detail"]["was"].clone(),
            )
        })
        .collect();
    seen.sort_by_key(|(id, _, _)| id.to_string());
    assert_eq!(
        seen,
        [
            (json!(ids[0]), json!("new"), json!("missing")),
            (json!(ids[1]), json!("cur"), json!("damaged")),
        ],
        "{events:?}"
    );

    // The restored message is indexed and handed out again.
    let again = r
        .cmd(["recv", "agent.b", "--json", "-n", "5"])
        .env(BOOT, "boot-b")
        .at(T + 4)
        .success()
        .json_lines();
    let again: Vec<&Value> = again.iter().map(|m| &m["id"]).collect();
    assert_eq!(again, [&json!(ids[0]), &json!(ids[3])]);
    r.cmd(["doctor"]).env(BOOT, "boot-b").at(T + 5).success();
}

#[test]
fn without_a_boot_id_a_durable_batch_fsyncs_every_message_instead() {
    let r = world("{}", &["agent.b"]);
    batch_on(&r, "", 3, &[]);
    assert!(
        !r.path("batches").exists(),
        "no log without a boot id to check it against"
    );
    assert_eq!(r.files("agent.b", "new").len(), 3);

    // A log written with one is never retired without one: nothing could
    // tell whether the machine restarted since.
    batch_on(&r, "boot-a", 3, &[]);
    r.cmd(["status"])
        .env(BOOT, "")
        .at(real_now_plus(61_000))
        .success();
    assert_eq!(batch_logs(&r).len(), 1, "kept");
}

#[test]
fn a_long_batch_retires_its_log_past_the_size_bound() {
    const N: usize = 5_001; // two chunks of the group commit
    let r = world(
        r#"{"reliability":{"rateLimit":{"enabled":false},"backpressure":{"maxMailboxSize":100000}}}"#,
        &["agent.b"],
    );
    let input: Vec<Value> = (0..N)
        .map(|i| json!({ "subject": "agent.b", "payload": i }))
        .collect();
    let out = r
        .cmd(["send", "--batch"])
        .stdin(ndjson(&input))
        .env(BOOT, "boot-a")
        .env("RELAY_BATCH_LOG_MAX_BYTES", "1024")
        .at(T)
        .success();
    let last = out.stdout.lines().last().expect("ids").to_owned();
    let logs = batch_logs(&r);
    assert_eq!(logs.len(), 1, "the first chunk's log was retired");
    let entries = log_records(&logs[0].1);
    assert_eq!(entries.len(), 1, "the second log holds the last chunk only");
    assert_eq!(entries[0].0["id"], last.as_str(), "{:?}", entries[0]);
    assert_eq!(r.files("agent.b", "new").len(), N);
}

#[test]
fn purging_dead_letters_first_retires_the_batch_logs() {
    // A replay after a power loss could not tell a purged dead letter from
    // a lost message: the purge makes the log's messages durable first.
    let r = world("{}", &["agent.b"]);
    let ids = batch_on(&r, "boot-a", 2, &[]);
    r.cmd(["recv", "agent.b", "--json"])
        .env(BOOT, "boot-a")
        .at(T + 1)
        .success();
    r.cmd(["nack", "agent.b", &ids[0], "--reason", "boom"])
        .env(BOOT, "boot-a")
        .at(T + 2)
        .success();
    assert_eq!(batch_logs(&r).len(), 1, "young: still there");
    // Held by a batch still running: the purge is refused for now.
    let (name, _) = batch_logs(&r).pop().expect("a log");
    let held = std::fs::File::open(r.path("batches").join(name)).expect("log");
    held.lock().expect("flock");
    r.cmd(["dlq", "purge", "--older-than", "0s", "--yes"])
        .env(BOOT, "boot-a")
        .at(T + 3)
        .code(75)
        .stderr_has(&["durable batch is still running"]);
    assert_eq!(r.files("agent.b", "failed").len(), 2, "nothing purged");
    drop(held);
    r.cmd(["dlq", "purge", "--older-than", "0s", "--yes"])
        .env(BOOT, "boot-a")
        .at(T + 3)
        .success();
    assert!(batch_logs(&r).is_empty(), "retired before the purge");
    r.cmd(["status"])
        .env(BOOT, "boot-b")
        .at(T + 4)
        .success()
        .stderr_empty();
    assert_eq!(r.files("agent.b", "new"), [format!("{}.json", ids[1])]);
    assert!(
        r.files("agent.b", "failed").is_empty(),
        "purged stays purged"
    );
}

#[test]
fn a_garbage_batch_log_is_set_aside_without_harm() {
    let r = world("{}", &["agent.b"]);
    let ids = batch_on(&r, "boot-a", 2, &[]);
    r.write_file(
        "batches/zz-garbage.log",
        b"\x00\xffnot a log\nq.r x 99999\n{",
    );
    r.write_file("batches/notes.txt", "not ours");
    r.cmd(["status"]).env(BOOT, "boot-b").at(T + 1).success();
    assert!(
        !r.path("batches/zz-garbage.log").exists(),
        "a log without a header holds nothing to replay"
    );
    assert!(
        r.path("batches/notes.txt").exists(),
        "other files are left alone"
    );
    let mut names = r.files("agent.b", "new");
    names.sort();
    let mut want: Vec<String> = ids.iter().map(|id| format!("{id}.json")).collect();
    want.sort();
    assert_eq!(names, want, "the real log replayed nothing (all present)");
}
