//! `relay metrics`: counts and nearest-rank latency percentiles, made exact
//! with the fake clock.

use serde_json::Value;

use super::{HOUR, T0, json_at, send_at};
use crate::harness::Relay;

/// Sends one message to `ep` at `at`, claims it `delivery` ms later and
/// acks it `processing` ms after that.
fn round_trip(r: &Relay, ep: &str, at: u64, delivery: u64, processing: u64) -> String {
    let id = send_at(r, at, &[ep, "work"]);
    let got = r
        .cmd(["recv", ep, "--json"])
        .at(at + delivery)
        .success()
        .json();
    assert_eq!(got["id"], id.as_str());
    r.cmd(["ack", ep, &id])
        .at(at + delivery + processing)
        .success();
    id
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[test]
fn percentiles_match_known_delivery_and_processing_latencies() {
    let r = Relay::new();
    r.add(&["work.q", "idle.q"]);
    // 20 messages, one per second: delivery 10,20,...,200 ms and
    // processing 5,10,...,100 ms (in a shuffled order, so the product must sort).
    let order = [
        7, 3, 19, 0, 12, 5, 16, 1, 9, 14, 2, 18, 6, 11, 4, 17, 8, 13, 10, 15,
    ];
    for (slot, k) in order.iter().enumerate() {
        let at = T0 + slot as u64 * 1_000;
        round_trip(&r, "work.q", at, (k + 1) * 10, (k + 1) * 5);
    }
    // Totals over exactly those 20.
    let m = json_at(&r, T0 + 25_000, &["metrics"]);
    assert!(
        m["p95DeliveryLatencyMs"].is_number(),
        "p95 must not be null: {m}"
    );
    assert_eq!(m["p50DeliveryLatencyMs"], 100, "{m}");
    assert_eq!(m["p95DeliveryLatencyMs"], 190, "{m}");
    assert_eq!(m["p99DeliveryLatencyMs"], 200, "{m}");
    assert!((f(&m["avgDeliveryLatencyMs"]) - 105.0).abs() < 1e-6, "{m}");
    assert_eq!(m["p50ProcessingLatencyMs"], 50, "{m}");
    assert_eq!(m["p95ProcessingLatencyMs"], 95, "{m}");
    assert_eq!(m["p99ProcessingLatencyMs"], 100, "{m}");
    assert!((f(&m["avgProcessingLatencyMs"]) - 52.5).abs() < 1e-6, "{m}");

    // Then one message still pending, one claimed and not yet acked.
    send_at(&r, T0 + 30_000, &["work.q", "pending"]);
    send_at(&r, T0 + 30_001, &["idle.q", "in flight"]);
    r.cmd(["recv", "idle.q"]).at(T0 + 30_500).success();

    let m = json_at(&r, T0 + 40_000, &["metrics"]);
    assert_eq!(m["totalMessages"], 22, "{m}");
    assert_eq!(m["deliveredCount"], 20, "{m}");
    assert_eq!(m["pendingCount"], 1, "{m}");
    assert_eq!(m["inFlightCount"], 1, "{m}");
    assert_eq!(m["failedCount"], 0, "{m}");
    assert_eq!(m["deadLetteredCount"], 0, "{m}");
    assert_eq!(m["activeEndpoints"], 2, "{m}");
    assert!(m["since"].is_null(), "{m}");

    let eps = m["endpoints"].as_array().expect("endpoints");
    let work = eps
        .iter()
        .find(|e| e["endpoint"] == "work.q")
        .expect("work.q in endpoints");
    assert_eq!(work["total"], 21, "{work}");
    assert_eq!(work["delivered"], 20, "{work}");
    assert_eq!(work["pending"], 1, "{work}");
    let d = &work["deliveryLatencyMs"];
    assert_eq!(d["count"], 20, "{d}");
    assert_eq!(d["p50"], 100, "{d}");
    assert_eq!(d["p95"], 190, "{d}");
    assert_eq!(d["p99"], 200, "{d}");
    assert!((f(&d["avg"]) - 105.0).abs() < 1e-6, "{d}");
    let p = &work["processingLatencyMs"];
    assert_eq!(p["count"], 20, "{p}");
    assert_eq!(p["p50"], 50, "{p}");
    assert_eq!(p["p95"], 95, "{p}");
    assert_eq!(p["p99"], 100, "{p}");
    assert!((f(&p["avg"]) - 52.5).abs() < 1e-6, "{p}");

    let idle = eps
        .iter()
        .find(|e| e["endpoint"] == "idle.q")
        .expect("idle.q in endpoints");
    assert_eq!(idle["inFlight"], 1, "{idle}");
    assert_eq!(idle["processingLatencyMs"]["count"], 0, "{idle}");
    assert!(idle["processingLatencyMs"]["p95"].is_null(), "{idle}");

    // Processing totals: only acked messages have a processing time.
    assert_eq!(m["p50ProcessingLatencyMs"], 50, "{m}");
    assert_eq!(m["p99ProcessingLatencyMs"], 100, "{m}");
}

#[test]
fn percentiles_are_nearest_rank_over_one_to_a_hundred() {
    let r = Relay::new();
    r.add(&["n.q"]);
    for k in 1..=100_u64 {
        let at = T0 + k * 1_000;
        let id = send_at(&r, at, &["n.q", "x"]);
        r.cmd(["recv", "n.q"]).at(at + k).success();
        r.cmd(["ack", "n.q", &id]).at(at + k + 1).success();
    }
    let m = json_at(&r, T0 + 200_000, &["metrics"]);
    assert_eq!(m["p50DeliveryLatencyMs"], 50, "{m}");
    assert_eq!(m["p95DeliveryLatencyMs"], 95, "{m}");
    assert_eq!(m["p99DeliveryLatencyMs"], 99, "{m}");
    assert_eq!(m["p99ProcessingLatencyMs"], 1, "{m}");
}

#[test]
fn since_counts_only_messages_sent_inside_the_window() {
    let r = Relay::new();
    r.add(&["w.q"]);
    // Two hours ago: slow (1000 ms); ten minutes ago: fast (40 ms).
    round_trip(&r, "w.q", T0, 1_000, 1);
    let old_failed = send_at(&r, T0 + 1, &["w.q", "old"]);
    r.cmd(["recv", "w.q"]).at(T0 + 2).success();
    r.cmd(["nack", "w.q", &old_failed]).at(T0 + 3).success();
    let now = T0 + 2 * HOUR;
    round_trip(&r, "w.q", now - 10 * 60_000, 40, 2);

    let all = json_at(&r, now, &["metrics"]);
    assert_eq!(all["totalMessages"], 3, "{all}");
    assert_eq!(all["failedCount"], 1, "{all}");

    let recent = json_at(&r, now, &["metrics", "--since", "1h"]);
    assert_eq!(recent["totalMessages"], 1, "{recent}");
    assert_eq!(recent["deliveredCount"], 1, "{recent}");
    assert_eq!(recent["failedCount"], 0, "{recent}");
    assert_eq!(recent["deadLetteredCount"], 0, "{recent}");
    assert_eq!(recent["p95DeliveryLatencyMs"], 40, "{recent}");
    assert_eq!(recent["p99DeliveryLatencyMs"], 40, "{recent}");
    assert!(
        recent["since"].is_string(),
        "the window is reported: {recent}"
    );
    let ep = &recent["endpoints"][0];
    assert_eq!(ep["total"], 1, "{recent}");
    assert_eq!(ep["deliveryLatencyMs"]["count"], 1, "{recent}");

    // A window holding nothing: zero counts, null latencies, not an error.
    let empty = json_at(&r, now + 5 * HOUR, &["metrics", "--since", "1h"]);
    assert_eq!(empty["totalMessages"], 0, "{empty}");
    assert!(empty["p95DeliveryLatencyMs"].is_null(), "{empty}");
}
