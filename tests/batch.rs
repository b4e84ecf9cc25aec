//! `relay send --batch`: NDJSON requests on stdin, the same checks per line,
//! one group commit per chunk (staging and renames on two threads), one
//! result line per request, in order.

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
    const N: usize = 1_500; // enough for both staging threads and three parts
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
