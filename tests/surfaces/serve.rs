//! `relay serve`: relay's own routes' statuses and JSON shapes against a
//! home in a known state (DorkOS's routes: tests/dorkos_http/), JSON
//! 404/405/400 errors, the token, the SSE stream and the Prometheus text.

use serde_json::Value;

use super::{Server, Sse, T, http, known_state, secs, send_from, send_json};
use crate::harness::Relay;

fn serve_at_t(r: &Relay) -> Server {
    Server::start(
        r,
        "127.0.0.1:0",
        &[],
        &[("RELAY_FAKE_NOW_MS", &T.to_string())],
    )
}

/// The element of `rows` whose `key` is `value`.
#[track_caller]
fn row<'a>(rows: &'a Value, key: &str, value: &str) -> &'a Value {
    rows.as_array()
        .and_then(|a| a.iter().find(|r| r[key] == value))
        .unwrap_or_else(|| panic!("no row with {key} = {value:?} in {rows}"))
}

#[test]
fn every_json_route_answers_with_its_shape() {
    let r = Relay::new();
    let first = known_state(&r, Some(T));
    let s = serve_at_t(&r);
    assert!(s.url.starts_with("http://127.0.0.1:"), "{}", s.url);

    let panel = s.get("/");
    assert_eq!(panel.status, 200, "{panel:?}");
    assert!(
        panel
            .header("content-type")
            .is_some_and(|c| c.starts_with("text/html")),
        "{panel:?}"
    );
    assert!(
        panel.body.contains("<title>relay</title>"),
        "{}",
        panel.body
    );
    assert!(
        panel.body.contains("/api/relay/breakers"),
        "the panel reads the API"
    );

    let status = s.get_json("/api/relay/status");
    assert_eq!(status["home"], r.home().display().to_string(), "{status}");
    assert_eq!(
        status["endpoints"].as_array().map(Vec::len),
        Some(3),
        "{status}"
    );
    assert!(
        status["events"].as_array().is_some_and(|e| !e.is_empty()),
        "{status}"
    );

    let eps = s.get_json("/api/relay/endpoints");
    let list = &eps;
    assert_eq!(list.as_array().map(Vec::len), Some(3), "{eps}");
    let b = row(list, "subject", "agent.b");
    assert_eq!(
        (b["depth"].as_u64(), b["failed"].as_u64()),
        (Some(0), Some(5)),
        "{b}"
    );
    let c = row(list, "subject", "agent.c");
    assert_eq!(
        (c["depth"].as_u64(), c["capacity"].as_u64()),
        (Some(4), Some(4)),
        "{c}"
    );
    assert_eq!(row(list, "subject", "agent.e")["depth"], 2, "{eps}");

    let trace = s.get_json(&format!("/api/relay/messages/{first}/trace"));
    assert_eq!(trace["traceId"], first.as_str(), "{trace}");
    let span = row(&trace["spans"], "messageId", &first);
    assert_eq!(span["copies"][0]["endpoint"], "agent.b", "{trace}");
    assert_eq!(span["copies"][0]["from"], "agent.a", "{trace}");
    assert_eq!(span["copies"][0]["state"], "failed", "{trace}");
    s.get("/api/relay/messages/01JZ0000000000000000000000/trace")
        .assert_error(404);

    // DorkOS's window (24 h) by default; ?since= for another.
    let m = s.get_json("/api/relay/trace/metrics");
    assert_eq!(m["totalMessages"], 11, "{m}");
    assert_eq!(m["deadLetteredCount"], 5, "{m}");
    assert_eq!(m["rateLimit"]["hardHits"], 1, "{m}");
    assert_eq!(m["breakers"]["opened"], 1, "{m}");
    assert_eq!(m["since"], "2025-12-31T00:00:00.000Z", "{m}");
    let m = s.get_json("/api/relay/trace/metrics?since=1h");
    assert_eq!(m["since"], "2025-12-31T23:00:00.000Z", "{m}");
    assert_eq!(m["totalMessages"], 11, "{m}");
    let m = s.get_json("/api/relay/trace/metrics?since=all");
    assert_eq!(m["since"], Value::Null, "{m}");

    let dl = s.get_json("/api/relay/dead-letters");
    let all = dl.as_array().expect("an array of dead letters");
    assert_eq!(all.len(), 5, "{dl}");
    assert!(all.iter().all(|d| d["endpointHash"] == "agent.b"), "{dl}");
    let d = row(&dl, "messageId", &first);
    assert_eq!(d["reason"], "handler exited with status 1");
    assert_eq!(d["envelope"]["id"], first.as_str(), "{d}");
    assert_eq!(d["envelope"]["from"], "agent.a", "{d}");
    let only_c = s.get_json("/api/relay/dead-letters?endpointHash=agent.c");
    assert_eq!(only_c, serde_json::json!([]), "{only_c}");
    let only_b = s.get_json("/api/relay/dead-letters?endpointHash=agent.b");
    assert_eq!(only_b.as_array().map(Vec::len), Some(5), "{only_b}");

    let br = s.get_json("/api/relay/breakers");
    let rows = br["breakers"].as_array().expect("breakers array");
    assert_eq!(rows.len(), 1, "{br}");
    let pair = &rows[0];
    assert_eq!(
        (&pair["sender"], &pair["endpoint"]),
        (&"agent.a".into(), &"agent.b".into()),
        "{br}"
    );
    assert_eq!(pair["state"], "open", "{br}");
    assert_eq!(pair["consecutiveFailures"], 5, "{br}");
    assert_eq!(pair["trips"], 1, "{br}");

    let lim = s.get_json("/api/relay/limits");
    assert_eq!(lim["enabled"], true, "{lim}");
    let x = row(&lim["limits"], "sender", "agent.x");
    assert_eq!(x["hardHits"], 1, "{lim}");
    assert_eq!(x["tokensLeft"], 0, "{lim}");
    assert_eq!(x["capacity"], 2, "{lim}");
    assert_eq!(
        row(&lim["limits"], "sender", "agent.a")["hardHits"],
        0,
        "{lim}"
    );

    let bp = s.get_json("/api/relay/backpressure");
    assert_eq!(bp["enabled"], true, "{bp}");
    assert_eq!(bp["warningAt"], 0.5, "{bp}");
    let level = |ep: &str| row(&bp["endpoints"], "endpoint", ep)["level"].clone();
    assert_eq!(level("agent.b"), "ok", "{bp}");
    assert_eq!(level("agent.c"), "full", "{bp}");
    assert_eq!(level("agent.e"), "warning", "{bp}");
    let c = row(&bp["endpoints"], "endpoint", "agent.c");
    assert_eq!(
        (c["depth"].as_u64(), c["capacity"].as_u64()),
        (Some(4), Some(4)),
        "{bp}"
    );
    assert_eq!(c["pressure"], 1.0, "{bp}");

    let ev = s.get_json("/api/relay/events?after=0");
    let events = ev["events"].as_array().expect("events array");
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["kind"].as_str()).collect();
    for k in [
        "dead_letter",
        "breaker_opened",
        "rate_limit_hard",
        "backpressure_warning",
    ] {
        assert!(kinds.contains(&k), "no {k} event in {ev}");
    }
    let ids: Vec<i64> = events.iter().filter_map(|e| e["id"].as_i64()).collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "events not in order: {ids:?}"
    );
    let last = *ids.last().expect("some events");
    let later = s.get_json(&format!("/api/relay/events?after={}", last - 1));
    let later_ids: Vec<i64> = later["events"]
        .as_array()
        .expect("events array")
        .iter()
        .filter_map(|e| e["id"].as_i64())
        .collect();
    assert_eq!(later_ids, vec![last], "after=N returns only newer events");
    assert_eq!(
        s.get_json(&format!("/api/relay/events?after={last}"))["events"],
        serde_json::json!([])
    );
}

#[test]
fn bad_routes_methods_and_filters_get_json_errors() {
    let r = Relay::new();
    r.add(&["agent.b"]);
    let s = Server::start(&r, "127.0.0.1:0", &[], &[]);
    for path in [
        "/nope",
        "/api/relay/",
        "/api/relay/nope",
        "/api/relay/messages//trace",
    ] {
        s.get(path).assert_error(404);
    }
    for (method, path, allow) in [
        ("POST", "/api/relay/breakers", "GET"),
        ("DELETE", "/api/relay/endpoints", "GET, POST"),
        ("PUT", "/", "GET"),
        ("POST", "/metrics", "GET"),
        (
            "POST",
            "/api/relay/messages/01JZ0000000000000000000000/trace",
            "GET",
        ),
        ("GET", "/api/relay/breakers/reset", "POST"),
    ] {
        let resp = http(s.addr, method, path, &[]);
        resp.assert_code(405, "METHOD_NOT_ALLOWED");
        assert_eq!(
            resp.header("allow"),
            Some(allow),
            "{method} {path}: {resp:?}"
        );
        assert!(resp.body.contains(path), "{resp:?}");
    }
    http(s.addr, "POST", "/nope", &[]).assert_error(404);
    for filter in ["a..b", "a.%3E.b", "%2E%2E"] {
        s.get(&format!("/api/relay/stream?subject={filter}"))
            .assert_error(400);
    }
}

#[test]
fn a_bad_since_is_a_400() {
    let r = Relay::new();
    r.add(&["agent.b"]);
    let s = Server::start(&r, "127.0.0.1:0", &[], &[]);
    s.get("/api/relay/trace/metrics?since=xx").assert_error(400);
}

#[test]
fn off_loopback_needs_allow_remote_and_a_token_which_every_request_presents() {
    let r = Relay::new();
    r.add(&["agent.b"]);
    r.cmd(["serve", "--listen", "0.0.0.0:0"])
        .code(64)
        .stderr_has(&["0.0.0.0", "--allow-remote"]);
    r.cmd(["serve", "--listen", "0.0.0.0:0", "--allow-remote"])
        .code(64)
        .stderr_has(&["RELAY_SERVE_TOKEN"]);
    r.cmd(["serve", "--listen", "0.0.0.0:0", "--allow-remote"])
        .env("RELAY_SERVE_TOKEN", "")
        .code(64);

    let s = Server::start(
        &r,
        "0.0.0.0:0",
        &["--allow-remote"],
        &[("RELAY_SERVE_TOKEN", "s3cret")],
    );
    assert!(s.url.starts_with("http://0.0.0.0:"), "{}", s.url);
    for path in ["/api/relay/endpoints", "/metrics", "/", "/api/relay/stream"] {
        s.get(path).assert_error(401);
        http(s.addr, "GET", path, &[("Authorization", "Bearer wrong")]).assert_error(401);
        s.get(&format!("{path}?token=wrong")).assert_error(401);
    }
    // The token is checked before routing: no probing for routes.
    s.get("/nope").assert_error(401);
    let ok = http(
        s.addr,
        "GET",
        "/api/relay/endpoints",
        &[("Authorization", "Bearer s3cret")],
    );
    assert_eq!(ok.status, 200, "{ok:?}");
    assert_eq!(ok.json()[0]["subject"], "agent.b", "{ok:?}");
    let ok = s.get("/api/relay/breakers?token=s3cret");
    assert_eq!(ok.status, 200, "{ok:?}");
    assert!(ok.json()["breakers"].is_array(), "{ok:?}");
    let ok = s.get("/metrics?token=s3cret");
    assert_eq!(ok.status, 200, "{ok:?}");
    drop(s);

    // On loopback, a token guards the writes; reads stay open to
    // loopback Host names.
    let s = Server::start(&r, "127.0.0.1:0", &[], &[("RELAY_SERVE_TOKEN", "t")]);
    assert_eq!(s.get("/api/relay/status").status, 200);
    http(s.addr, "POST", "/api/relay/limits/reset", &[]).assert_code(401, "AUTH_REQUIRED");
    let ok = send_json(
        s.addr,
        "POST",
        "/api/relay/limits/reset?token=t",
        &serde_json::json!({ "all": true }),
    );
    assert_eq!(ok.status, 200, "{ok:?}");
    assert_eq!(ok.json()["reset"], 0, "{ok:?}");
}

#[test]
fn the_stream_sends_connected_then_messages_and_signals_for_its_filter() {
    let r = Relay::new();
    r.add(&["agent.b", "other"]);
    // A small mailbox, to raise backpressure.
    r.write_file(
        "config.json",
        r#"{"reliability":{"backpressure":{"maxMailboxSize":4,"pressureWarningAt":0.5}}}"#,
    );
    let before = send_from(&r, "agent.a", "agent.b", "before", None);
    let s = Server::start(&r, "127.0.0.1:0", &[], &[]);
    let mut sse = Sse::open(s.addr, "/api/relay/stream?subject=agent.*");
    let hello = sse.until(secs(5), "relay_connected", |_| true);
    assert_eq!(hello.event, "relay_connected", "the first event: {hello:?}");
    assert_eq!(hello.data["pattern"], "agent.*", "{hello:?}");

    // Sent after connecting: the non-matching one first.
    let elsewhere = send_from(&r, "agent.a", "other", "not for us", None);
    let id = send_from(&r, "agent.a", "agent.b", "for us", None);
    let msg = sse.until(secs(10), "relay_message for the new send", |e| {
        e.event == "relay_message" && e.data["id"] == id.as_str()
    });
    // The envelope as stored, with its id on the id: line.
    assert_eq!(msg.id.as_deref(), Some(id.as_str()), "{msg:?}");
    assert_eq!(msg.data["subject"], "agent.b", "{msg:?}");
    assert_eq!(msg.data["from"], "agent.a", "{msg:?}");
    assert_eq!(msg.data["payload"], "for us", "{msg:?}");
    assert_eq!(msg.data["budget"]["hopCount"], 1, "{msg:?}");
    for e in &sse.seen {
        assert_ne!(
            e.data["id"],
            elsewhere.as_str(),
            "filtered-out message streamed: {e:?}"
        );
        assert_ne!(
            e.data["id"],
            before.as_str(),
            "message from before connecting streamed: {e:?}"
        );
    }

    // agent.b now holds 2/4: the next send is a backpressure warning, a
    // DorkOS Signal.
    send_from(&r, "agent.a", "agent.b", "pressing", None);
    let bp = sse.until(secs(10), "relay_backpressure", |e| {
        e.event == "relay_backpressure"
    });
    assert_eq!(bp.data["type"], "backpressure", "{bp:?}");
    assert_eq!(bp.data["state"], "warning", "{bp:?}");
    assert_eq!(bp.data["endpointSubject"], "agent.b", "{bp:?}");
    assert_eq!(bp.data["data"]["currentSize"], 2, "{bp:?}");
    assert_eq!(bp.data["data"]["pressure"], 0.5, "{bp:?}");
    assert!(bp.id.is_none(), "DorkOS's signals carry no id: {bp:?}");

    // relay's other events are relay_event: a dead letter from a nack.
    r.cmd(["recv", "agent.b", "--exec", "exit 2"]).success();
    let sig = sse.until(secs(10), "relay_event for the dead letter", |e| {
        e.event == "relay_event" && e.data["kind"] == "dead_letter"
    });
    assert_eq!(sig.data["endpoint"], "agent.b", "{sig:?}");
    assert_eq!(sig.data["messageId"], before.as_str(), "{sig:?}");
    assert_eq!(
        sig.data["detail"]["reason"], "handler exited with status 2",
        "{sig:?}"
    );
    assert!(sig.id.is_some(), "relay's events carry a position: {sig:?}");
}

/// The value of the sample `name{labels}` in Prometheus text `text`.
#[track_caller]
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
}

#[test]
fn prometheus_text_has_the_relay_families_with_their_values() {
    let r = Relay::new();
    known_state(&r, Some(T));
    let s = serve_at_t(&r);
    let resp = s.get("/metrics");
    assert_eq!(resp.status, 200, "{resp:?}");
    assert!(
        resp.header("content-type")
            .is_some_and(|c| c.starts_with("text/plain; version=0.0.4")),
        "{resp:?}"
    );
    let t = &resp.body;
    for (family, kind) in [
        ("relay_mailbox_depth", "gauge"),
        ("relay_mailbox_pressure", "gauge"),
        ("relay_breaker_state", "gauge"),
        ("relay_rate_limit_tokens", "gauge"),
        ("relay_rate_limit_hits_total", "counter"),
        ("relay_dead_letters", "gauge"),
        ("relay_delivery_latency_seconds", "histogram"),
    ] {
        assert!(
            t.contains(&format!("# TYPE {family} {kind}\n")),
            "no TYPE {family} {kind}:\n{t}"
        );
        assert!(
            t.contains(&format!("# HELP {family} ")),
            "no HELP for {family}:\n{t}"
        );
    }
    for l in t.lines().filter(|l| !l.starts_with('#')) {
        assert!(
            l.starts_with("relay_"),
            "sample without the relay_ prefix: {l}"
        );
    }
    assert_eq!(sample(t, r#"relay_mailbox_depth{endpoint="agent.b"}"#), 0.0);
    assert_eq!(sample(t, r#"relay_mailbox_depth{endpoint="agent.c"}"#), 4.0);
    assert_eq!(sample(t, r#"relay_mailbox_depth{endpoint="agent.e"}"#), 2.0);
    assert_eq!(
        sample(t, r#"relay_mailbox_pressure{endpoint="agent.c"}"#),
        1.0
    );
    assert_eq!(
        sample(t, r#"relay_mailbox_pressure{endpoint="agent.e"}"#),
        0.5
    );
    assert_eq!(
        sample(
            t,
            r#"relay_breaker_state{sender="agent.a",endpoint="agent.b"}"#
        ),
        2.0
    );
    assert_eq!(
        sample(t, r#"relay_rate_limit_tokens{sender="agent.x"}"#),
        0.0
    );
    assert_eq!(
        sample(t, r#"relay_rate_limit_tokens{sender="agent.y"}"#),
        2.0
    );
    assert_eq!(
        sample(
            t,
            r#"relay_rate_limit_hits_total{sender="agent.x",kind="hard"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(
            t,
            r#"relay_rate_limit_hits_total{sender="agent.a",kind="hard"}"#
        ),
        0.0
    );
    assert_eq!(sample(t, r#"relay_dead_letters{endpoint="agent.b"}"#), 5.0);
    assert_eq!(sample(t, r#"relay_dead_letters{endpoint="agent.c"}"#), 0.0);
    // Five claims, all at the pinned instant of their send: latency 0.
    assert_eq!(sample(t, "relay_delivery_latency_seconds_count"), 5.0);
    assert_eq!(sample(t, "relay_delivery_latency_seconds_sum"), 0.0);
    assert_eq!(
        sample(t, r#"relay_delivery_latency_seconds_bucket{le="+Inf"}"#),
        5.0
    );
    assert_eq!(
        sample(t, r#"relay_delivery_latency_seconds_bucket{le="0.001"}"#),
        5.0
    );
    // Buckets are cumulative.
    let buckets: Vec<f64> = t
        .lines()
        .filter(|l| l.starts_with("relay_delivery_latency_seconds_bucket"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse().ok())
        .collect();
    assert!(
        buckets.len() >= 2 && buckets.windows(2).all(|w| w[0] <= w[1]),
        "{buckets:?}"
    );
}
