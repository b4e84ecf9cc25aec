//! The directory: each host's endpoints reach the others within seconds,
//! marked with their host, and go when removed there.

use super::harness::{Pair, endpoints, send_for_reply, wait_for, wait_remote};

#[test]
fn remote_endpoints_appear_marked_with_their_host_and_disappear_when_removed() {
    let Some(p) = Pair::start(&["agent.a"], &["agent.b"]) else {
        return;
    };
    // Listed on A with B's name; A's own stays local.
    let listed = endpoints(&p.a);
    assert!(listed.contains(&("agent.a".into(), None)), "{listed:?}");
    assert!(
        listed.contains(&("agent.b".into(), Some("hostb".into()))),
        "{listed:?}"
    );
    let table = p.a.cmd(["endpoints"]).success().stdout;
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("agent.b") && l.contains("hostb")),
        "{table}"
    );
    // A proxy is not published back as A's own.
    std::thread::sleep(std::time::Duration::from_secs(1));
    assert!(
        !endpoints(&p.b)
            .iter()
            .any(|(s, h)| s == "agent.b" && h.is_some()),
        "B took its own endpoint for a remote one"
    );

    p.b.add(&["agent.new"]);
    wait_remote(&p.a, "agent.new", "hostb");

    p.b.cmd(["endpoints", "remove", "agent.new"]).success();
    wait_for("agent.new to disappear on A", || {
        (!endpoints(&p.a).iter().any(|(s, _)| s == "agent.new")).then_some(())
    });
    // A send to it now finds nothing: no silent loss.
    p.a.cmd(["send", "agent.new", "{}"]).code(69);
}

#[test]
fn sigterm_stops_the_bridge_cleanly_and_says_so() {
    let Some(mut p) = Pair::start(&["agent.a"], &["agent.b"]) else {
        return;
    };
    assert!(p.a.path("bridge/link.json").exists(), "{}", p.a.listing());
    assert_eq!(p.ba.stop(), Some(0), "{}", p.ba.log());
    assert!(p.ba.log().contains("stopped"), "{}", p.ba.log());
    assert!(!p.a.path("bridge/link.json").exists());
    // The proxies stay: sends to B queue until a bridge runs again.
    p.a.cmd(["send", "agent.b", "{}"]).success();
    assert_eq!(super::harness::ids(&p.a, "agent.b", "new").len(), 1);
}

#[test]
fn a_proxy_is_not_for_receiving_here() {
    let Some(p) = Pair::start(&[], &["agent.b"]) else {
        return;
    };
    p.a.cmd(["recv", "agent.b"])
        .code(77)
        .stderr_has(&["'agent.b'", "host 'hostb'"]);
}

#[test]
fn the_url_and_host_can_come_from_the_environment_and_config_json() {
    let Some(nats) = super::harness::Nats::start() else {
        return;
    };
    let (a, b) = (crate::harness::Relay::new(), crate::harness::Relay::new());
    a.write_file("config.json", r#"{"bridge":{"host":"hosta"}}"#);
    b.write_file(
        "config.json",
        format!(r#"{{"bridge":{{"host":"hostb","url":"{}"}}}}"#, nats.url()),
    );
    b.add(&["agent.b"]);
    let _ba = super::harness::Bridge::start_flagless(&a, &[("RELAY_NATS_URL", &nats.url())]);
    let _bb = super::harness::Bridge::start_flagless(&b, &[]);
    wait_remote(&a, "agent.b", "hostb");
}

#[test]
fn bad_bridge_arguments_are_usage_errors_naming_the_value() {
    let r = crate::harness::Relay::new();
    r.cmd(["bridge", "--nats", "nats://127.0.0.1:1"])
        .code(64)
        .stderr_has(&["--host"]);
    r.cmd(["bridge", "--host", "a.b"])
        .code(64)
        .stderr_has(&["'a.b'"]);
    r.cmd(["bridge", "--host", "a", "--nats", "nats://x:1,::bad::"])
        .code(64)
        .stderr_has(&["'::bad::'"]);
    r.cmd(["bridge", "--host", "a", "--replicas", "9"])
        .code(64)
        .stderr_has(&["9"]);
}

#[test]
fn a_send_into_a_proxy_made_while_the_publisher_idles_is_forwarded_at_once() {
    use super::harness::{Bridge, Nats, ids};
    let Some(nats) = Nats::start() else {
        return;
    };
    let (a, b) = (crate::harness::Relay::new(), crate::harness::Relay::new());
    b.add(&["agent.b"]);
    // A's publisher looks at its outbox only when woken (its fallback look
    // an hour away): a copy it is not told about stays queued.
    let _ba = Bridge::start_with(
        &a,
        &nats.url(),
        "hosta",
        &[("RELAY_BRIDGE_IDLE_MS", "3600000")],
    );
    let _bb = Bridge::start(&b, &nats.url(), "hostb");
    wait_remote(&a, "agent.b", "hostb");
    // A proxy made while the publisher idles, written to as soon as it is
    // listed: the directory wakes the publisher, which watches it from then.
    b.add(&["agent.new"]);
    wait_remote(&a, "agent.new", "hostb");
    let first = a
        .cmd(["send", "agent.new", "{}", "--json"])
        .success()
        .json();
    let first = first["id"].as_str().unwrap_or_default().to_string();
    assert!(!first.is_empty());
    wait_for("the first copy for agent.new on B", || {
        ids(&b, "agent.new", "new").contains(&first).then_some(())
    });
    // And the proxies' notifications wake it for what follows.
    for ep in ["agent.new", "agent.b"] {
        let sent = a.cmd(["send", ep, "{}", "--json"]).success().json();
        let id = sent["id"].as_str().unwrap_or_default().to_string();
        wait_for(&format!("the copy for {ep} on B"), || {
            ids(&b, ep, "new").contains(&id).then_some(())
        });
    }
    assert_eq!(ids(&a, "agent.new", "new"), Vec::<String>::new());
}

#[test]
fn a_host_whose_bridge_died_is_gone_after_three_missed_heartbeats_and_back_when_it_beats() {
    use super::harness::ids;
    // A beats every 100 ms, B every second: A judges B by B's heartbeat
    // (gone after 3 s of silence, a margin a loaded machine's stalls stay
    // well inside).
    let Some(mut p) = Pair::start_with(
        &["agent.a"],
        &["agent.b"],
        r#"{"bridge":{"heartbeatMs":100}}"#,
        r#"{"bridge":{"heartbeatMs":1000}}"#,
    ) else {
        return;
    };
    // Alive: listed all along while B beats, for many of A's own
    // heartbeats and several of B's.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while std::time::Instant::now() < until {
        assert!(
            endpoints(&p.a)
                .iter()
                .any(|(s, h)| s == "agent.b" && h.as_deref() == Some("hostb")),
            "B's endpoint left A while B's bridge was beating:\n{}",
            p.ba.log()
        );
    }
    // B's bridge dies: A stops listing B's endpoints, and a send to one
    // finds no endpoint (69) instead of queueing for a host that is gone.
    p.bb.kill9();
    wait_for("agent.b to leave A's directory", || {
        (!endpoints(&p.a).iter().any(|(s, _)| s == "agent.b")).then_some(())
    });
    assert!(
        p.ba.log().contains("host 'hostb' is gone"),
        "{}",
        p.ba.log()
    );
    p.a.cmd(["send", "agent.b", "{}"]).code(69);
    // B's own side is untouched: its endpoint is still there.
    assert!(endpoints(&p.b).contains(&("agent.b".into(), None)));
    // Back: its next heartbeat lists it again, and sends reach it.
    p.bb.up();
    wait_remote(&p.a, "agent.b", "hostb");
    let sent =
        p.a.cmd(["send", "agent.b", "{}", "--json"])
            .success()
            .json();
    let id = sent["id"].as_str().unwrap_or_default().to_string();
    assert!(!id.is_empty());
    wait_for("the copy on B", || {
        ids(&p.b, "agent.b", "new").contains(&id).then_some(())
    });
}

/// A server on which no one may publish to hostb's message subjects (the
/// connections without credentials are user `a`): A's copies for B stay
/// queued in their proxies, as while the link is down, while the directory
/// and B's heartbeats still get through.
const NO_FORWARDING: &str = r#"
authorization {
  users = [
    { user: a, password: a, permissions: { publish: { deny: ["relay.hostb.msg.>"] } } }
  ]
}
no_auth_user: a
"#;

/// The failure notice at `replies` on `relay`, and the dead letter `id`
/// of `ep` as `dlq list --json` shows it.
fn notice_and_dead_letter(
    relay: &crate::harness::Relay,
    replies: &str,
    ep: &str,
    id: &str,
) -> (serde_json::Value, serde_json::Value) {
    let notice = wait_for("the failure notice", || {
        let out = relay.cmd(["recv", replies, "--json"]).run();
        (out.code == 0).then(|| out.json())
    });
    let dlq = relay.cmd(["dlq", "list", "--json"]).success().json();
    let letter = dlq["deadLetters"]
        .as_array()
        .and_then(|a| a.iter().find(|d| d["id"] == id && d["endpoint"] == ep))
        .cloned()
        .unwrap_or_else(|| panic!("no dead letter {id} of {ep}: {dlq}"));
    (notice, letter)
}

#[test]
fn a_copy_queued_for_an_endpoint_removed_on_its_host_is_a_dead_letter_with_a_notice() {
    use super::harness::{Nats, ids, now_ms};
    let Some(nats) = Nats::start_conf(NO_FORWARDING) else {
        return;
    };
    let since = now_ms();
    let p = Pair::start_on(nats, &["agent.a.replies"], &["agent.b"], "{}", "{}");
    let id = send_for_reply(&p.a, &[]);
    assert_eq!(
        ids(&p.a, "agent.b", "new").len() + ids(&p.a, "agent.b", "cur").len(),
        1
    );
    p.b.cmd(["endpoints", "remove", "agent.b"]).success();
    let (notice, letter) = notice_and_dead_letter(&p.a, "agent.a.replies", "agent.b", &id);
    assert_eq!(notice["from"], "relay.notice", "{notice}");
    assert_eq!(notice["payload"]["code"], "no_match", "{notice}");
    assert_eq!(notice["payload"]["messageId"], id.as_str(), "{notice}");
    assert_eq!(letter["code"], "no_match", "{letter}");
    assert!(
        letter["reason"]
            .as_str()
            .is_some_and(|r| r.contains("removed on host 'hostb'")),
        "{letter}"
    );
    // Recorded as every dead letter is: the index row and the event.
    let shown = p.a.cmd(["trace", &id, "--json"]).success().stdout;
    assert!(shown.contains("no_match"), "{shown}");
    let events = p.a.events_of(since, "dead_letter");
    assert!(
        events
            .iter()
            .any(|e| e["messageId"] == id.as_str() && e["endpoint"] == "agent.b"),
        "{events:?}"
    );
}

#[test]
fn a_copy_queued_for_a_host_that_is_gone_is_a_dead_letter_with_a_notice() {
    use super::harness::{Nats, now_ms};
    let Some(nats) = Nats::start_conf(NO_FORWARDING) else {
        return;
    };
    let since = now_ms();
    let mut p = Pair::start_on(
        nats,
        &["agent.a.replies"],
        &["agent.b"],
        r#"{"bridge":{"heartbeatMs":100}}"#,
        r#"{"bridge":{"heartbeatMs":300}}"#,
    );
    let id = send_for_reply(&p.a, &[]);
    p.bb.kill9();
    let (notice, letter) = notice_and_dead_letter(&p.a, "agent.a.replies", "agent.b", &id);
    assert_eq!(notice["payload"]["code"], "no_match", "{notice}");
    assert_eq!(notice["payload"]["messageId"], id.as_str(), "{notice}");
    assert_eq!(letter["code"], "no_match", "{letter}");
    assert!(
        letter["reason"]
            .as_str()
            .is_some_and(|r| r.contains("host 'hostb' is gone")),
        "{letter}"
    );
    let events = p.a.events_of(since, "dead_letter");
    assert!(
        events.iter().any(|e| e["messageId"] == id.as_str()),
        "{events:?}"
    );
}
