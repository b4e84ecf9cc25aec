//! `send --idempotency-key`: a repeat within the window returns the original
//! id and delivers nothing.

use super::{DAY, MIN, T0, ids, send_at};
use crate::harness::Relay;

#[test]
fn a_repeat_returns_the_original_id_and_delivers_nothing() {
    let r = Relay::new();
    r.add(&["a.x"]);
    let id = send_at(&r, T0, &["a.x", "first", "--idempotency-key", "order-17"]);
    let again = send_at(
        &r,
        T0 + MIN,
        &["a.x", "second", "--idempotency-key", "order-17"],
    );
    assert_eq!(again, id, "the repeat prints the original id");
    let j = r
        .cmd([
            "send",
            "a.x",
            "third",
            "--idempotency-key",
            "order-17",
            "--json",
        ])
        .at(T0 + 2 * MIN)
        .success()
        .json();
    assert_eq!(j["id"], id.as_str(), "{j}");
    assert_eq!(j["duplicate"], true, "{j}");
    assert_eq!(ids(&r, "a.x", "new"), vec![id.clone()], "one file");
    assert_eq!(
        r.read_json(&format!("mailboxes/a.x/new/{id}.json"))["payload"],
        "first"
    );
    // A different key is a different message.
    let other = send_at(
        &r,
        T0 + 3 * MIN,
        &["a.x", "x", "--idempotency-key", "order-18"],
    );
    assert_ne!(other, id);
    assert_eq!(ids(&r, "a.x", "new").len(), 2);
}

#[test]
fn a_duplicate_reports_its_key_in_json() {
    let r = Relay::new();
    r.add(&["a.x"]);
    let id = send_at(&r, T0, &["a.x", "first", "--idempotency-key", "order-17"]);
    let j = r
        .cmd([
            "send",
            "a.x",
            "again",
            "--idempotency-key",
            "order-17",
            "--json",
        ])
        .at(T0 + 1)
        .success()
        .json();
    assert_eq!(j["id"], id.as_str(), "{j}");
    assert_eq!(j["duplicate"], true, "{j}");
    assert_eq!(j["idempotencyKey"], "order-17", "{j}");
}

#[test]
fn keys_belong_to_their_sender() {
    let r = Relay::new();
    r.add(&["a.x"]);
    let a = send_at(
        &r,
        T0,
        &["a.x", "p", "--from", "agent.a", "--idempotency-key", "k"],
    );
    let b = send_at(
        &r,
        T0,
        &["a.x", "p", "--from", "agent.b", "--idempotency-key", "k"],
    );
    assert_ne!(a, b, "another sender's key space");
    assert_eq!(
        send_at(
            &r,
            T0 + 1,
            &["a.x", "p", "--from", "agent.b", "--idempotency-key", "k"]
        ),
        b
    );
    assert_eq!(
        send_at(
            &r,
            T0 + 1,
            &["a.x", "p", "--from", "agent.a", "--idempotency-key", "k"]
        ),
        a
    );
    assert_eq!(ids(&r, "a.x", "new").len(), 2);
}

#[test]
fn after_the_window_the_key_sends_anew() {
    let r = Relay::new();
    r.add(&["a.x"]);
    // Default window: one day.
    let id = send_at(&r, T0, &["a.x", "p", "--idempotency-key", "k"]);
    assert_eq!(
        send_at(
            &r,
            T0 + DAY - 1_000,
            &["a.x", "p", "--idempotency-key", "k"]
        ),
        id
    );
    let fresh = send_at(
        &r,
        T0 + DAY + 1_000,
        &["a.x", "p", "--idempotency-key", "k"],
    );
    assert_ne!(fresh, id);
    assert_eq!(ids(&r, "a.x", "new").len(), 2);

    // A configured window.
    r.cmd(["config", "set", "idempotency.windowSecs", "60"])
        .success();
    let t = T0 + 2 * DAY;
    let first = send_at(&r, t, &["a.x", "p", "--idempotency-key", "short"]);
    assert_eq!(
        send_at(&r, t + 59_000, &["a.x", "p", "--idempotency-key", "short"]),
        first
    );
    let later = send_at(&r, t + 61_000, &["a.x", "p", "--idempotency-key", "short"]);
    assert_ne!(later, first);
    assert_eq!(ids(&r, "a.x", "new").len(), 4);
}

#[test]
fn a_refused_send_does_not_consume_the_key() {
    let r = Relay::new();
    r.add(&["a.x"]);
    r.cmd(["config", "set", "reliability.rateLimit.maxPerWindow", "1"])
        .success();
    send_at(&r, T0, &["a.x", "fill the bucket"]);
    r.cmd(["send", "a.x", "p", "--idempotency-key", "k"])
        .at(T0 + 1)
        .code(75);
    assert_eq!(ids(&r, "a.x", "new").len(), 1);
    // Once the bucket refills, the same key delivers (not a duplicate).
    let j = r
        .cmd(["send", "a.x", "p", "--idempotency-key", "k", "--json"])
        .at(T0 + 2 * MIN)
        .success()
        .json();
    assert!(j.get("duplicate").is_none_or(|d| d == false), "{j}");
    let id = j["id"].as_str().expect("id").to_string();
    assert_eq!(ids(&r, "a.x", "new").len(), 2);
    assert!(ids(&r, "a.x", "new").contains(&id));
}
