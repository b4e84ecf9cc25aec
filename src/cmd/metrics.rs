//! `relay metrics`: delivery metrics from SQL aggregates over the index and
//! the event log, for all history or a window.

use serde::Serialize;
use serde_json::json;

use crate::cli::MetricsArgs;
use crate::context::Ctx;
use crate::error::Result;
use crate::output;
use crate::store::reports::{self, Counts, Latency};
use crate::vocab::{Code, EventKind};

/// Metrics of one endpoint.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct EndpointMetrics {
    endpoint: String,
    #[serde(flatten)]
    counts: Counts,
    delivery_latency_ms: Latency,
    processing_latency_ms: Latency,
}

/// Runs `relay metrics`.
pub fn run(ctx: &mut Ctx, args: &MetricsArgs) -> Result<()> {
    let now = ctx.clock.now_ms();
    let since = args
        .since
        .map_or(0, |d| now.saturating_sub(crate::clock::ms(d)));
    let report = compute(ctx, since)?;
    if ctx.json {
        return output::json_line(&report);
    }
    render(&report)
}

/// The metrics JSON (the seed's `trace/metrics` fields first, then ours)
/// for messages sent at or after `since` (0 = all history).
pub fn compute(ctx: &mut Ctx, since: u64) -> Result<serde_json::Value> {
    let active = crate::maildir::list_endpoints(&ctx.home)?.len();
    let store = ctx.store()?;
    let per: Vec<(String, Counts)> = store.read(|c| reports::counts(c, since))?;
    let mut delivery = store.read(|c| reports::latencies(c, reports::DELIVERY, since))?;
    let mut processing = store.read(|c| reports::latencies(c, reports::PROCESSING, since))?;
    let endpoints: Vec<EndpointMetrics> = per
        .into_iter()
        .map(|(endpoint, counts)| EndpointMetrics {
            delivery_latency_ms: delivery.remove(&Some(endpoint.clone())).unwrap_or_default(),
            processing_latency_ms: processing
                .remove(&Some(endpoint.clone()))
                .unwrap_or_default(),
            endpoint,
            counts,
        })
        .collect();
    let total_messages = store.read(|c| reports::distinct_messages(c, since))?;
    let delivery = delivery.remove(&None).unwrap_or_default();
    let processing = processing.remove(&None).unwrap_or_default();
    let codes = store.read(|c| reports::codes(c, since))?;
    let kinds = store.read(|c| reports::event_kinds(c, since))?;
    let code = |k: Code| {
        codes
            .iter()
            .find(|(c, _)| c == k.as_str())
            .map_or(0, |(_, n)| *n)
    };
    let kind = |k: EventKind| {
        kinds
            .iter()
            .find(|(c, _)| c == k.as_str())
            .map_or(0, |(_, n)| *n)
    };
    let sum = |f: fn(&Counts) -> u64| endpoints.iter().map(|e| f(&e.counts)).sum::<u64>();

    // The seed's `trace/metrics` fields first, then ours.
    let report = json!({
        "totalMessages": total_messages,
        "deliveredCount": sum(|c| c.delivered),
        "failedCount": sum(|c| c.failed),
        "deadLetteredCount": sum(|c| c.dead_lettered),
        "avgDeliveryLatencyMs": delivery.avg,
        "p95DeliveryLatencyMs": delivery.p95,
        "activeEndpoints": active,
        "budgetRejections": {
            "hopLimit": code(Code::HopLimit),
            "ttlExpired": code(Code::TtlExpired),
            "cycleDetected": code(Code::CycleDetected),
            "budgetExhausted": code(Code::BudgetExhausted),
        },
        "since": (since > 0).then(|| crate::clock::iso8601(since)),
        "pendingCount": sum(|c| c.pending),
        "inFlightCount": sum(|c| c.in_flight),
        "p50DeliveryLatencyMs": delivery.p50,
        "p99DeliveryLatencyMs": delivery.p99,
        "avgProcessingLatencyMs": processing.avg,
        "p50ProcessingLatencyMs": processing.p50,
        "p95ProcessingLatencyMs": processing.p95,
        "p99ProcessingLatencyMs": processing.p99,
        "accessDenied": code(Code::AccessDenied),
        "noMatch": code(Code::NoMatch),
        "rateLimit": { "softHits": kind(EventKind::RateLimitSoft), "hardHits": kind(EventKind::RateLimitHard) },
        "breakers": {
            "opened": kind(EventKind::BreakerOpened),
            "halfOpened": kind(EventKind::BreakerHalfOpen),
            "closed": kind(EventKind::BreakerClosed),
        },
        "backpressure": {
            "warnings": kind(EventKind::BackpressureWarning),
            "rejections": kind(EventKind::BackpressureRejected),
        },
        "leasesExpired": kind(EventKind::LeaseExpired),
        "redeliveries": kind(EventKind::Redelivered),
        "maxDeliveries": code(Code::MaxDeliveries),
        "failureNotices": kind(EventKind::FailureNotice),
        "endpoints": endpoints,
    });
    Ok(report)
}

/// The metrics as text for people, from the JSON `compute` makes.
fn render(r: &serde_json::Value) -> Result<()> {
    let n = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
    let ms = |v: &serde_json::Value| {
        v.as_u64()
            .map_or_else(|| "-".to_string(), |v| format!("{v}ms"))
    };
    let budget = &r["budgetRejections"];
    let mut lines = vec![
        format!(
            "messages {}  delivered {}  failed {}  dead-lettered {}  pending {}  in flight {}{}",
            n(&r["totalMessages"]),
            n(&r["deliveredCount"]),
            n(&r["failedCount"]),
            n(&r["deadLetteredCount"]),
            n(&r["pendingCount"]),
            n(&r["inFlightCount"]),
            r["since"]
                .as_str()
                .map(|s| format!("  (since {s})"))
                .unwrap_or_default(),
        ),
        format!(
            "delivery latency   p50 {}  p95 {}  p99 {}",
            ms(&r["p50DeliveryLatencyMs"]),
            ms(&r["p95DeliveryLatencyMs"]),
            ms(&r["p99DeliveryLatencyMs"])
        ),
        format!(
            "processing latency p50 {}  p95 {}  p99 {}",
            ms(&r["p50ProcessingLatencyMs"]),
            ms(&r["p95ProcessingLatencyMs"]),
            ms(&r["p99ProcessingLatencyMs"])
        ),
        format!(
            "budget rejections  hop_limit {}  ttl_expired {}  cycle_detected {}  budget_exhausted {}",
            n(&budget["hopLimit"]),
            n(&budget["ttlExpired"]),
            n(&budget["cycleDetected"]),
            n(&budget["budgetExhausted"])
        ),
        format!(
            "rate limit soft {} hard {}  breakers opened {}  backpressure warnings {} rejections {}  access denied {}",
            n(&r["rateLimit"]["softHits"]),
            n(&r["rateLimit"]["hardHits"]),
            n(&r["breakers"]["opened"]),
            n(&r["backpressure"]["warnings"]),
            n(&r["backpressure"]["rejections"]),
            n(&r["accessDenied"]),
        ),
        format!(
            "leases expired {}  redeliveries {}  dead-lettered after max deliveries {}",
            n(&r["leasesExpired"]),
            n(&r["redeliveries"]),
            n(&r["maxDeliveries"]),
        ),
    ];
    let endpoints = r["endpoints"].as_array().cloned().unwrap_or_default();
    if !endpoints.is_empty() {
        let mut t = output::table(&[
            "endpoint",
            "total",
            "delivered",
            "failed",
            "dead",
            "pending",
            "p50",
            "p95",
            "p99",
        ]);
        for e in &endpoints {
            let lat = &e["deliveryLatencyMs"];
            t.add_row(vec![
                e["endpoint"].as_str().unwrap_or_default().to_string(),
                n(&e["total"]).to_string(),
                n(&e["delivered"]).to_string(),
                n(&e["failed"]).to_string(),
                n(&e["deadLettered"]).to_string(),
                n(&e["pending"]).to_string(),
                ms(&lat["p50"]),
                ms(&lat["p95"]),
                ms(&lat["p99"]),
            ]);
        }
        lines.push(String::new());
        lines.push(output::table_text(&t));
    }
    output::line(&lines.join("\n"))
}
