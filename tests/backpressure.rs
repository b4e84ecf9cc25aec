//! Backpressure per endpoint from its depth (files in new/ + cur/, whoever
//! put them there): a warning at `pressureWarningAt`, a refusal (75) at
//! `maxMailboxSize`, priority lanes shed early or granted headroom, `recv`
//! by priority, and fan-out sends that are refused on some endpoints only.

use serde_json::json;

use crate::harness::{Relay, T, dorkos_envelope};

/// A world with `endpoints` and `config` (rate limits off, so only the
/// mailbox decides).
fn world(endpoints: &[&str], backpressure: &str) -> Relay {
    let r = Relay::new();
    r.add(endpoints);
    r.write_file(
        "config.json",
        format!(
            r#"{{"reliability":{{"rateLimit":{{"enabled":false}},"backpressure":{backpressure}}}}}"#
        ),
    );
    r
}

/// Messages in `ep`'s new/ and cur/.
fn depth(r: &Relay, ep: &str) -> usize {
    r.files(ep, "new").len() + r.files(ep, "cur").len()
}

/// `relay send EP PAYLOAD [--priority LANE]` at T: what it did.
fn send<'a>(r: &'a Relay, ep: &str, payload: &str, lane: &str) -> crate::harness::Output<'a> {
    r.cmd(["send", ep, payload, "--priority", lane]).at(T).run()
}

/// Drops a DorkOS envelope into `<ep>/<sub>/` as another program would.
fn drop_in(r: &Relay, ep: &str, sub: &str, n: usize) {
    for i in 0..n {
        let id = format!("01JZZZZZZZZZZZZZZZZZZZZ{i:03}");
        let env = dorkos_envelope(&id, ep, &json!({"by": "hand", "i": i}));
        r.write_file(
            &format!("mailboxes/{ep}/{sub}/{id}.json"),
            serde_json::to_vec_pretty(&env).unwrap_or_default(),
        );
    }
}

#[test]
fn warns_at_the_warning_ratio_and_refuses_at_capacity() {
    let r = world(&["q"], r#"{"maxMailboxSize":10}"#);
    for i in 0..8 {
        send(&r, "q", &format!("m{i}"), "normal")
            .success()
            .stderr_empty();
    }
    for (d, pct) in [(8, 80), (9, 90)] {
        let out = send(&r, "q", "warned", "normal").success();
        let expected = format!(
            "relay: warning: mailbox 'q' under backpressure: {pct}% full ({d}/10 messages in new/ and cur/)\n"
        );
        if out.stderr != expected {
            out.fail(&format!("stderr is not exactly {expected:?}"));
        }
    }
    assert_eq!(depth(&r, "q"), 10);

    let out = send(&r, "q", "refused", "normal").code(75).stdout_is("");
    for needle in ["mailbox 'q'", "10/10"] {
        if !out.stderr.contains(needle) {
            out.fail(&format!("the refusal lacks {needle:?}"));
        }
    }
    assert_eq!(depth(&r, "q"), 10, "a refused send writes nothing");
    assert!(r.files("q", "tmp").is_empty());
    assert!(
        r.files("q", "failed").is_empty(),
        "a single-endpoint refusal is not dead-lettered"
    );

    let warnings = r.events_of(T, "backpressure_warning");
    let rejected = r.events_of(T, "backpressure_rejected");
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert_eq!(warnings[0]["endpoint"], "q");
    assert_eq!(warnings[0]["detail"]["depth"], 8, "{}", warnings[0]);
    assert_eq!(rejected[0]["endpoint"], "q");
    assert_eq!(rejected[0]["detail"]["depth"], 10, "{}", rejected[0]);
}

#[test]
fn the_warning_is_in_send_json_and_the_refusal_is_json_on_stderr() {
    let r = world(&["q"], r#"{"maxMailboxSize":2,"pressureWarningAt":0.5}"#);
    let out = r.cmd(["send", "q", "1", "--json"]).at(T).success();
    assert_eq!(out.json()["warnings"], json!([]));
    let out = r.cmd(["send", "q", "2", "--json"]).at(T).success();
    assert_eq!(
        out.json()["warnings"],
        json!(["mailbox 'q' under backpressure: 50% full (1/2 messages in new/ and cur/)"])
    );
    let out = r
        .cmd(["send", "q", "3", "--json"])
        .at(T)
        .code(75)
        .stdout_is("");
    let err = out.stderr_json();
    assert_eq!(err["error"]["code"], 75, "{err}");
    let msg = err["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("'q'") && msg.contains("2/2"), "{err}");
}

#[test]
fn claimed_messages_count_until_acked() {
    let r = world(&["q"], r#"{"maxMailboxSize":4}"#);
    for i in 0..4 {
        r.cmd(["send", "q", &format!("m{i}")]).at(T).success();
    }
    let out = r.cmd(["recv", "q", "-n", "2", "--json"]).at(T).success();
    let ids: Vec<String> = out
        .json_lines()
        .iter()
        .filter_map(|m| m["id"].as_str().map(str::to_string))
        .collect();
    assert_eq!(
        (r.files("q", "new").len(), r.files("q", "cur").len()),
        (2, 2)
    );
    send(&r, "q", "still full", "normal")
        .code(75)
        .stderr_has(&["4/4"]);
    r.cmd(["ack", "q", &ids[0]]).at(T).success();
    send(&r, "q", "room again", "normal").success();
    assert_eq!(depth(&r, "q"), 4);
}

#[test]
fn files_dropped_in_by_hand_count_toward_the_depth() {
    let r = world(&["q"], r#"{"maxMailboxSize":10}"#);
    drop_in(&r, "q", "new", 7);
    send(&r, "q", "quiet", "normal").success().stderr_empty();
    // One more by hand, into cur/ this time: 9 of 10.
    r.write_file(
        "mailboxes/q/cur/01JZZZZZZZZZZZZZZZZZZZZCCC.json",
        serde_json::to_vec(&dorkos_envelope(
            "01JZZZZZZZZZZZZZZZZZZZZCCC",
            "q",
            &json!("claimed by another program"),
        ))
        .unwrap_or_default(),
    );
    send(&r, "q", "warned", "normal")
        .success()
        .stderr_has(&["mailbox 'q' under backpressure: 90% full (9/10 messages in new/ and cur/)"]);
    send(&r, "q", "refused", "normal")
        .code(75)
        .stderr_has(&["mailbox 'q'", "10/10"]);
    assert_eq!(depth(&r, "q"), 10);

    // A mailbox filled entirely by hand refuses the very first relay send.
    let r = world(&["q"], r#"{"maxMailboxSize":5}"#);
    drop_in(&r, "q", "new", 5);
    send(&r, "q", "refused", "normal")
        .code(75)
        .stderr_has(&["mailbox 'q'", "5/5"]);
    assert_eq!(r.files("q", "new").len(), 5);
}

#[test]
fn priority_lanes_are_shed_in_order_and_urgent_ones_get_headroom() {
    // Capacity 20, headroom 0.1 (2 slots): background stops at 15 (0.75),
    // low at 18 (0.9), normal at 20, high at 21 (half the headroom),
    // critical at 22.
    let r = world(&["q"], r#"{"maxMailboxSize":20}"#);
    for i in 0..14 {
        send(&r, "q", &format!("fill{i}"), "normal").success();
    }
    for (lane, limit) in [
        ("background", 15),
        ("low", 18),
        ("normal", 20),
        ("high", 21),
        ("critical", 22),
    ] {
        while depth(&r, "q") < limit {
            let d = depth(&r, "q");
            let out = send(&r, "q", lane, lane);
            if out.code != 0 {
                out.fail(&format!(
                    "{lane} refused at depth {d}, below its limit {limit}"
                ));
            }
        }
        let out = send(&r, "q", lane, lane).code(75).stdout_is("");
        if !out.stderr.contains("'q'") {
            out.fail("the refusal does not name the endpoint");
        }
        if lane != "normal" && !out.stderr.contains(lane) {
            out.fail("the refusal does not name the lane");
        }
        assert_eq!(
            depth(&r, "q"),
            limit,
            "{lane}: nothing written when refused"
        );
        // Every lower lane is refused too at this depth.
        if lane != "background" {
            send(&r, "q", "bg", "background").code(75);
        }
    }
    let rejected = r.events_of(T, "backpressure_rejected");
    let lanes: Vec<&str> = rejected
        .iter()
        .filter_map(|e| e["detail"]["priority"].as_str())
        .collect();
    assert_eq!(
        lanes,
        [
            "background",
            "low",
            "background",
            "normal",
            "background",
            "high",
            "background",
            "critical",
            "background"
        ]
    );
}

#[test]
fn recv_hands_out_higher_priority_first_fifo_within_a_lane() {
    let r = world(&["q"], r#"{"maxMailboxSize":100}"#);
    for (payload, lane) in [
        ("low1", "low"),
        ("normal1", "normal"),
        ("background1", "background"),
        ("critical1", "critical"),
        ("high1", "high"),
        ("normal2", "normal"),
        ("critical2", "critical"),
        ("low2", "low"),
        ("high2", "high"),
    ] {
        send(&r, "q", payload, lane).success();
    }
    // Dropped by hand without a priority: normal.
    drop_in(&r, "q", "new", 1);
    // One at a time for the first two, then the rest in one batch.
    let mut got = Vec::new();
    for _ in 0..2 {
        let out = r.cmd(["recv", "q", "--json"]).at(T).success();
        got.push(out.json()["payload"].clone());
    }
    let out = r.cmd(["recv", "q", "--json", "-n", "20"]).at(T).success();
    got.extend(out.json_lines().into_iter().map(|m| m["payload"].clone()));
    let hand = json!({"by": "hand", "i": 0});
    assert_eq!(
        got,
        [
            json!("critical1"),
            json!("critical2"),
            json!("high1"),
            json!("high2"),
            // The hand-dropped envelope was created long before: oldest normal.
            hand,
            json!("normal1"),
            json!("normal2"),
            json!("low1"),
            json!("low2"),
            json!("background1"),
        ]
    );
    r.cmd(["recv", "q"]).at(T).code(66);
}

#[test]
fn a_fan_out_refused_by_some_endpoints_succeeds_and_dead_letters_their_copies() {
    let r = world(&["t.a", "t.b", "t.c"], r#"{"maxMailboxSize":1}"#);
    r.cmd(["send", "t.a", "filler"]).at(T).success();
    // t.c is refused by its breaker instead.
    r.cmd(["breakers", "open", "agent.s", "t.c"])
        .at(T)
        .success();

    let out = r
        .cmd(["send", "t.*", "hello", "--from", "agent.s", "--json"])
        .at(T)
        .success();
    let v = out.json();
    let id = v["id"].as_str().unwrap_or_default().to_string();
    assert_eq!(v["deliveredTo"], json!(["t.b"]), "{v}");
    let rejected = v["rejected"].as_array().cloned().unwrap_or_default();
    let by_ep = |ep: &str| {
        rejected
            .iter()
            .find(|x| x["endpoint"] == ep)
            .cloned()
            .unwrap_or_else(|| out.fail(&format!("no rejected entry for {ep}")))
    };
    let ra = by_ep("t.a");
    assert_eq!(ra["code"], "backpressure", "{ra}");
    assert_eq!(ra["deadLettered"], true, "{ra}");
    let rc = by_ep("t.c");
    assert_eq!(rc["code"], "circuit_open", "{rc}");
    assert_eq!(rc["deadLettered"], true, "{rc}");
    assert_eq!(rejected.len(), 2, "{v}");
    assert!(
        v["warnings"].as_array().is_some_and(|w| w.len() >= 2),
        "each refused copy is a warning: {v}"
    );

    assert_eq!(r.files("t.b", "new"), [format!("{id}.json")]);
    assert_eq!(r.files("t.a", "new").len(), 1, "only the filler");
    for (ep, code) in [("t.a", "backpressure"), ("t.c", "circuit_open")] {
        assert_eq!(
            r.files(ep, "failed"),
            [format!("{id}.json"), format!("{id}.reason.json")],
            "{ep}"
        );
        let reason = r.read_json(&format!("mailboxes/{ep}/failed/{id}.reason.json"));
        assert_eq!(reason["code"], code, "{reason}");
        assert_eq!(reason["envelope"]["id"], id.as_str(), "{reason}");
        assert!(r.files(ep, "cur").is_empty());
    }

    // Without --json the refused copies are warnings on stderr.
    r.cmd(["breakers", "reset", "--all"]).at(T).success();
    r.cmd(["recv", "t.b"]).at(T).success();
    r.cmd(["send", "t.*", "again"])
        .at(T)
        .success()
        .stderr_has(&["t.a", "backpressure"]);
}

#[test]
fn a_fan_out_refused_everywhere_exits_75_and_writes_nothing() {
    let r = world(&["t.a", "t.b"], r#"{"maxMailboxSize":1}"#);
    r.cmd(["send", "t.a", "filler"]).at(T).success();
    r.cmd(["send", "t.b", "filler"]).at(T).success();
    let before = r.mailbox_tree();
    r.cmd(["send", "t.*", "nobody takes me"])
        .at(T)
        .code(75)
        .stdout_is("")
        .stderr_has(&["mailbox 't.a'", "mailbox 't.b'"]);
    assert_eq!(
        r.mailbox_tree(),
        before,
        "nothing written, nothing dead-lettered"
    );
}
