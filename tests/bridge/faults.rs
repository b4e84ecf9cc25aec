//! Partitions and restarts: nothing lost, nothing twice; refusals on the
//! receiving host come back to the sender's.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};

use super::harness::{Pair, drain, ids, now_ms, send_for_reply, wait_for, wait_link_down};

/// Neither limits nor capacity get in the way of a stream of messages.
const OPEN: &str =
    r#"{"reliability":{"rateLimit":{"enabled":false},"backpressure":{"maxMailboxSize":100000}}}"#;

#[test]
fn sends_while_nats_is_down_exit_0_and_arrive_after_it_is_back() {
    let Some(mut p) = Pair::start(&["agent.a"], &["agent.b"]) else {
        return;
    };
    // Something from B first, so the handshake has a last id from it.
    let from_b = p.b.send("agent.a", "{}");
    wait_for("B's message on A", || {
        (ids(&p.a, "agent.a", "new") == [from_b.clone()]).then_some(())
    });
    p.nats.kill();
    let mut sent = Vec::new();
    for i in 0..5 {
        sent.push(p.a.send("agent.b", &format!("{{\"i\":{i}}}")));
    }
    assert_eq!(
        ids(&p.a, "agent.b", "new").len() + ids(&p.a, "agent.b", "cur").len(),
        5
    );
    // The link's own breaker sees the link down.
    wait_for("the link's breaker to open", || {
        let v = p.a.cmd(["breakers", "--json"]).success().json();
        let open = v["breakers"].as_array()?.iter().any(|b| {
            b["sender"] == "relay.bridge" && b["endpoint"] == "nats.hosta" && b["state"] == "open"
        });
        open.then_some(())
    });
    p.nats.up();
    sent.sort();
    wait_for("the queued copies on B", || {
        (ids(&p.b, "agent.b", "new") == sent).then_some(())
    });
    // The reconnection handshake, as an event and in relay status.
    let ev = wait_for("the reconnect event", || {
        p.a.events_of(now_ms(), "bridge_reconnected").pop()
    });
    let d = &ev["detail"];
    assert!(d["queued"].as_u64().is_some_and(|q| q <= 5), "{ev}");
    assert_eq!(d["expiredDuringOutage"], 0, "{ev}");
    assert_eq!(d["lastReceived"]["hostb"], from_b.as_str(), "{ev}");
    let st = p.a.cmd(["status", "--json"]).success().json();
    assert_eq!(st["bridge"]["host"], "hosta", "{st}");
    assert_eq!(st["bridge"]["running"], true, "{st}");
    assert_eq!(
        st["bridge"]["lastReconnect"]["kind"], "bridge_reconnected",
        "{st}"
    );
    let text = p.a.cmd(["status"]).success().stdout;
    assert!(
        text.contains("bridge: host 'hosta'") && text.contains("last reconnect"),
        "{text}"
    );
    // Closed again once the link is back.
    let v = p.a.cmd(["breakers", "--json"]).success().json();
    assert!(
        !v["breakers"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|b| b["sender"] == "relay.bridge" && b["state"] == "open"),
        "{v}"
    );
}

#[test]
fn the_queue_drains_by_priority_then_age() {
    let Some(mut p) = Pair::start(&[], &["agent.b"]) else {
        return;
    };
    p.nats.kill();
    // Queued while the link is known down: a copy taken before is in
    // flight already, and goes first.
    wait_link_down(&p.a);
    let mut sent = Vec::new();
    for prio in ["normal", "low", "critical", "normal", "high"] {
        let id =
            p.a.cmd(["send", "agent.b", "{}", "--priority", prio])
                .success()
                .id();
        sent.push((prio, id));
    }
    p.nats.up();
    wait_for("every copy on B", || {
        (ids(&p.b, "agent.b", "new").len() == 5).then_some(())
    });
    let order: Vec<String> =
        p.a.events_of(now_ms(), "bridge_forwarded")
            .iter()
            .filter_map(|e| e["messageId"].as_str().map(str::to_string))
            .collect();
    let want: Vec<String> = [2, 4, 0, 3, 1].iter().map(|&i| sent[i].1.clone()).collect();
    assert_eq!(order, want, "critical, high, normal (older first), low");
}

/// `send --batch` lines for `n` messages to `ep`, from `k`.
fn lines(ep: &str, from: usize, n: usize) -> String {
    (from..from + n)
        .map(|i| json!({ "subject": ep, "payload": { "i": i } }).to_string() + "\n")
        .collect()
}

#[test]
fn kill_9_of_either_bridge_and_a_server_restart_mid_stream_deliver_1000_exactly_once() {
    let Some(mut p) = Pair::start_with(&[], &["agent.b"], OPEN, OPEN) else {
        return;
    };
    let mut sent: Vec<String> = Vec::new();
    let mut got: Vec<String> = Vec::new();
    let chunk = |p: &mut Pair, sent: &mut Vec<String>, k: usize| {
        let out =
            p.a.cmd(["send", "--batch", "--from", "agent.a"])
                .stdin(lines("agent.b", k * 100, 100))
                .success();
        sent.extend(out.stdout.lines().map(str::to_string));
    };
    for k in 0..10 {
        chunk(&mut p, &mut sent, k);
        std::thread::sleep(Duration::from_millis(150));
        match k {
            2 => p.ba.kill9(),
            4 => p.ba.up(),
            5 => p.bb.kill9(),
            6 => p.bb.up(),
            7 => {
                p.nats.kill();
                std::thread::sleep(Duration::from_millis(300));
                p.nats.up();
            }
            _ => {}
        }
        // Consumed on B as it goes, so a copy delivered again after its
        // first was acked would show twice.
        got.extend(drain(&p.b, "agent.b"));
    }
    assert_eq!(sent.len(), 1000);
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    while got.len() < 1000 {
        assert!(
            std::time::Instant::now() < deadline,
            "{} of 1000 on B; A's outbox: {} new, {} cur\nbridge A:\n{}\nbridge B:\n{}",
            got.len(),
            ids(&p.a, "agent.b", "new").len(),
            ids(&p.a, "agent.b", "cur").len(),
            p.ba.log(),
            p.bb.log()
        );
        std::thread::sleep(Duration::from_millis(100));
        got.extend(drain(&p.b, "agent.b"));
    }
    // Nothing more comes: no duplicate is on its way.
    std::thread::sleep(Duration::from_secs(2));
    got.extend(drain(&p.b, "agent.b"));
    let unique: BTreeSet<&String> = got.iter().collect();
    assert_eq!(unique.len(), got.len(), "a message arrived twice");
    let want: BTreeSet<&String> = sent.iter().collect();
    assert_eq!(unique, want, "lost or foreign messages");
    assert!(ids(&p.a, "agent.b", "new").is_empty() && ids(&p.a, "agent.b", "cur").is_empty());
}

#[test]
fn a_copy_published_again_after_the_dedup_window_is_still_delivered_once() {
    let cfg = r#"{"bridge":{"dedupWindowMs":1000}}"#;
    let Some(mut p) = Pair::start_with(&[], &["agent.b"], cfg, cfg) else {
        return;
    };
    assert_eq!(p.ba.stop(), Some(0));
    let id = p.a.send("agent.b", r#"{"once":true}"#);
    let file = format!("mailboxes/agent.b/new/{id}.json");
    let bytes = std::fs::read(p.a.path(&file)).unwrap_or_else(|e| panic!("{e}"));
    p.ba.up();
    wait_for("the copy on B", || {
        (drain(&p.b, "agent.b") == [id.clone()]).then_some(())
    });
    // As a bridge killed after the publish ack, before removing its copy,
    // would leave it: published again once JetStream forgot the id.
    std::thread::sleep(Duration::from_millis(1500));
    // Delivered as Maildir delivers (tmp/, then a rename into new/): a
    // file written in place could be taken while still empty.
    let tmp = format!("mailboxes/agent.b/tmp/{id}.json");
    p.a.write_file(&tmp, &bytes);
    std::fs::rename(p.a.path(&tmp), p.a.path(&file)).unwrap_or_else(|e| panic!("{e}"));
    wait_for("B to recognise the repeat", || {
        p.b.events_of(now_ms(), "bridge_duplicate")
            .iter()
            .any(|e| e["messageId"] == id.as_str())
            .then_some(())
    });
    assert!(drain(&p.b, "agent.b").is_empty(), "delivered twice");
    assert!(ids(&p.a, "agent.b", "new").is_empty());
}

#[test]
fn backpressure_on_b_redelivers_later_and_loses_nothing() {
    let Some(p) = Pair::start(&[], &["agent.b"]) else {
        return;
    };
    // Set while the bridge runs: it follows the configuration.
    p.b.cmd([
        "config",
        "set",
        "reliability.backpressure.maxMailboxSize",
        "3",
    ])
    .success();
    let sent: Vec<String> = (0..6)
        .map(|i| p.a.send("agent.b", &format!("{{\"i\":{i}}}")))
        .collect();
    wait_for("B full", || {
        (ids(&p.b, "agent.b", "new").len() == 3).then_some(())
    });
    wait_for("the refusal on A", || {
        p.a.events_of(now_ms(), "remote_span")
            .iter()
            .any(|e| e["detail"]["state"] == "retrying" && e["detail"]["code"] == "backpressure")
            .then_some(())
    });
    let mut got = drain(&p.b, "agent.b");
    wait_for("the rest on B", || {
        got.extend(drain(&p.b, "agent.b"));
        (got.len() >= 6).then_some(())
    });
    got.sort();
    let mut want = sent.clone();
    want.sort();
    assert_eq!(got, want);
}

#[test]
fn a_permanent_refusal_on_b_is_a_failure_notice_and_a_failed_span_on_a() {
    let Some(p) = Pair::start(&["agent.a.replies"], &["agent.b"]) else {
        return;
    };
    p.b.write_file(
        "access-rules.json",
        r#"[{"from":"agent.a","to":"agent.b","action":"deny","priority":1}]"#,
    );
    let id = send_for_reply(&p.a, &[]);
    let notice: Value = wait_for("the failure notice on A", || {
        let out = p.a.cmd(["recv", "agent.a.replies", "--json"]).run();
        (out.code == 0).then(|| out.json())
    });
    assert_eq!(
        notice["payload"]["type"], "relay.failure_notice",
        "{notice}"
    );
    assert_eq!(notice["payload"]["messageId"], id.as_str());
    assert_eq!(notice["payload"]["code"], "access_denied");
    assert_eq!(notice["traceId"], id.as_str());
    // B kept the dead letter; A's trace shows the span failed.
    assert_eq!(ids(&p.b, "agent.b", "failed"), std::slice::from_ref(&id));
    let span = wait_for("the failed span on A", || {
        let t = p.a.cmd(["trace", &id, "--json"]).success().json();
        t["spans"]
            .as_array()?
            .iter()
            .find(|s| s["endpoint"] == "agent.b" && s["state"] == "failed")
            .cloned()
    });
    assert_eq!(span["code"], "access_denied", "{span}");
}

#[test]
fn a_copy_whose_ttl_passes_in_the_outbox_is_dead_lettered_at_home_with_a_notice() {
    let Some(mut p) = Pair::start(&["agent.a.replies"], &["agent.b"]) else {
        return;
    };
    p.nats.kill();
    let id = send_for_reply(&p.a, &["--ttl", "1s"]);
    wait_for("the expiry in A's outbox", || {
        (ids(&p.a, "agent.b", "failed") == [id.clone()]).then_some(())
    });
    let n =
        p.a.cmd(["recv", "agent.a.replies", "--json"])
            .success()
            .json();
    assert_eq!(n["payload"]["code"], "ttl_expired", "{n}");
    assert_eq!(n["payload"]["messageId"], id.as_str());
    p.nats.up();
    let ev = wait_for("the reconnect event", || {
        p.a.events_of(now_ms(), "bridge_reconnected").pop()
    });
    assert_eq!(ev["detail"]["expiredDuringOutage"], 1, "{ev}");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        ids(&p.b, "agent.b", "new").is_empty(),
        "an expired copy was forwarded"
    );
}

#[test]
fn a_copy_refused_past_max_deliveries_is_dead_lettered_on_b_with_a_notice_on_a() {
    let b_cfg =
        r#"{"bridge":{"maxDeliveries":2},"reliability":{"backpressure":{"maxMailboxSize":1}}}"#;
    let Some(p) = Pair::start_with(&["agent.a.replies"], &["agent.b"], "{}", b_cfg) else {
        return;
    };
    let first = p.a.send("agent.b", "{}");
    wait_for("the first copy on B", || {
        (ids(&p.b, "agent.b", "new") == [first.clone()]).then_some(())
    });
    // B stays full: the second is refused, redelivered once, then dead-lettered.
    let id = send_for_reply(&p.a, &[]);
    let n = wait_for("the failure notice on A", || {
        let out = p.a.cmd(["recv", "agent.a.replies", "--json"]).run();
        (out.code == 0).then(|| out.json())
    });
    assert_eq!(n["payload"]["code"], "max_deliveries", "{n}");
    assert_eq!(n["payload"]["messageId"], id.as_str());
    assert_eq!(ids(&p.b, "agent.b", "failed"), std::slice::from_ref(&id));
    assert_eq!(ids(&p.b, "agent.b", "new"), std::slice::from_ref(&first));
}

#[test]
fn sigterm_stops_both_bridges_while_nats_is_down() {
    let Some(mut p) = Pair::start(&["agent.a"], &["agent.b"]) else {
        return;
    };
    p.nats.kill();
    // Down as the bridges see it: the link's breaker opens on A.
    wait_for("the link's breaker to open", || {
        let v = p.a.cmd(["breakers", "--json"]).success().json();
        let open = v["breakers"].as_array()?.iter().any(|b| {
            b["sender"] == "relay.bridge" && b["endpoint"] == "nats.hosta" && b["state"] == "open"
        });
        open.then_some(())
    });
    // A fetch held open, a directory put or a span awaiting its ack on a
    // server that is gone must not hold up the stop: each bridge exits
    // within 2 s of SIGTERM (it took 3.1 to 5.5 s while a request waited for its
    // timeout), and cleanly.
    let limit = std::time::Duration::from_secs(2);
    assert_eq!(p.bb.stop_within(limit), Some(0), "{}", p.bb.log());
    assert_eq!(p.ba.stop_within(limit), Some(0), "{}", p.ba.log());
    assert!(p.ba.log().contains("stopped"), "{}", p.ba.log());
}

#[test]
fn the_reconnect_event_reaches_the_sse_stream_with_the_handshake() {
    use crate::surfaces::{Server, Sse, secs};
    let Some(mut p) = Pair::start(&["agent.a"], &["agent.b"]) else {
        return;
    };
    let s = Server::start(&p.a, "127.0.0.1:0", &[], &[]);
    let mut sse = Sse::open(s.addr, "/api/relay/stream?subject=nats.*");
    sse.until(secs(10), "relay_connected", |e| {
        e.event == "relay_connected"
    });
    p.nats.kill();
    let queued = p.a.send("agent.b", "{}");
    wait_for("the link's breaker to open", || {
        let v = p.a.cmd(["breakers", "--json"]).success().json();
        let open = v["breakers"].as_array()?.iter().any(|b| {
            b["sender"] == "relay.bridge" && b["endpoint"] == "nats.hosta" && b["state"] == "open"
        });
        open.then_some(())
    });
    p.nats.up();
    let ev = sse.until(super::harness::PATIENCE, "bridge_reconnected", |e| {
        e.event == "relay_event" && e.data["kind"] == "bridge_reconnected"
    });
    // A relay event: its stream position on the id: line, the link's pair,
    // and the handshake (what was queued, what expired, the last ids).
    assert!(ev.id.is_some(), "{ev:?}");
    assert_eq!(ev.data["sender"], "relay.bridge", "{ev:?}");
    assert_eq!(ev.data["endpoint"], "nats.hosta", "{ev:?}");
    let d = &ev.data["detail"];
    assert!(d["queued"].as_u64().is_some_and(|q| q <= 1), "{ev:?}");
    assert_eq!(d["expiredDuringOutage"], 0, "{ev:?}");
    assert!(d["lastReceived"].is_object(), "{ev:?}");
    wait_for("the queued copy on B", || {
        (ids(&p.b, "agent.b", "new") == [queued.clone()]).then_some(())
    });
}

#[test]
fn under_json_the_bridge_prints_only_json_lines_on_stderr() {
    use super::harness::{Bridge, Nats};
    use crate::harness::Relay;
    let Some(mut nats) = Nats::start() else {
        return;
    };
    // Down at first: it says it cannot reach the server, and tries again.
    nats.kill();
    let (a, b) = (Relay::new(), Relay::new());
    b.add(&["agent.b"]);
    let mut ba = Bridge::start_json(&a, &nats.url(), "hosta");
    let said = |what: &'static str, ba: &Bridge| {
        wait_for(what, || ba.log().contains(what).then_some(()));
    };
    said("cannot reach NATS", &ba);
    nats.up();
    said("connected to NATS", &ba);
    let _bb = Bridge::start(&b, &nats.url(), "hostb");
    said("host 'hostb' has agent.b", &ba);
    nats.kill();
    said("lost the connection", &ba);
    nats.up();
    said("reconnected to NATS", &ba);
    assert_eq!(ba.stop(), Some(0), "{}", ba.log());
    let log = ba.log();
    let mut kinds = std::collections::BTreeSet::new();
    for line in log.lines() {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}\n{log}"));
        let obj = v.as_object().filter(|o| o.len() == 1);
        let (kind, body) = obj
            .and_then(|o| o.iter().next())
            .unwrap_or_else(|| panic!("not one object: {line}"));
        assert!(kind == "notice" || kind == "warning", "{line}");
        assert!(body["message"].is_string(), "{line}");
        kinds.insert(kind.clone());
    }
    assert_eq!(kinds.len(), 2, "{log}");
    assert!(log.contains("connecting to"), "{log}");
    assert!(log.contains(r#"for host 'hosta' stopped"#), "{log}");
}

#[test]
fn a_copy_reaching_b_after_its_endpoint_was_removed_there_is_a_notice_on_a() {
    let Some(mut p) = Pair::start(&["agent.a.replies"], &["agent.b"]) else {
        return;
    };
    // B's bridge is down while the copy is forwarded, and the endpoint is
    // removed on B before its bridge is back to apply it.
    assert_eq!(p.bb.stop(), Some(0), "{}", p.bb.log());
    let id = send_for_reply(&p.a, &[]);
    wait_for("the copy forwarded", || {
        (ids(&p.a, "agent.b", "new").is_empty() && ids(&p.a, "agent.b", "cur").is_empty())
            .then_some(())
    });
    p.b.cmd(["endpoints", "remove", "agent.b"]).success();
    p.bb.up();
    let notice: Value = wait_for("the failure notice on A", || {
        let out = p.a.cmd(["recv", "agent.a.replies", "--json"]).run();
        (out.code == 0).then(|| out.json())
    });
    assert_eq!(notice["payload"]["messageId"], id.as_str(), "{notice}");
    assert_eq!(notice["payload"]["code"], "no_match", "{notice}");
}
