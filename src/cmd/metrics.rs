//! `relay metrics`: delivery metrics from SQL aggregates over the index and
//! the event log, for all history or a window.

use serde::Serialize;
use serde_json::json;

use crate::cli::MetricsArgs;
use crate::context::Ctx;
use crate::error::Result;
use crate::output;
use crate::store::reports::{self, Counts, Latency};

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
    let since = args.since.map_or(0, |d| {
        now.saturating_sub(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    });
    let active = crate::maildir::list_endpoints(&ctx.home)?.len();
    let store = ctx.store()?;
    let per: Vec<(String, Counts)> = store.read(|c| reports::counts(c, since))?;
    let mut endpoints = Vec::new();
    for (endpoint, counts) in per {
        let delivery =
            store.read(|c| reports::latency(c, reports::DELIVERY, since, Some(&endpoint)))?;
        let processing =
            store.read(|c| reports::latency(c, reports::PROCESSING, since, Some(&endpoint)))?;
        endpoints.push(EndpointMetrics {
            endpoint,
            counts,
            delivery_latency_ms: delivery,
            processing_latency_ms: processing,
        });
    }
    let total_messages = store.read(|c| reports::distinct_messages(c, since))?;
    let delivery = store.read(|c| reports::latency(c, reports::DELIVERY, since, None))?;
    let processing = store.read(|c| reports::latency(c, reports::PROCESSING, since, None))?;
    let codes = store.read(|c| reports::codes(c, since))?;
    let kinds = store.read(|c| reports::event_kinds(c, since))?;
    let code = |k: &str| codes.iter().find(|(c, _)| c == k).map_or(0, |(_, n)| *n);
    let kind = |k: &str| kinds.iter().find(|(c, _)| c == k).map_or(0, |(_, n)| *n);
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
            "hopLimit": code("hop_limit"),
            "ttlExpired": code("ttl_expired"),
            "cycleDetected": code("cycle_detected"),
            "budgetExhausted": code("budget_exhausted"),
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
        "accessDenied": code("access_denied"),
        "noMatch": code("no_match"),
        "rateLimit": { "softHits": kind("rate_limit_soft"), "hardHits": kind("rate_limit_hard") },
        "breakers": {
            "opened": kind("breaker_opened"),
            "halfOpened": kind("breaker_half_open"),
            "closed": kind("breaker_closed"),
        },
        "backpressure": {
            "warnings": kind("backpressure_warning"),
            "rejections": kind("backpressure_rejected"),
        },
        "leasesExpired": kind("lease_expired"),
        "failureNotices": kind("failure_notice"),
        "endpoints": endpoints,
    });
    if ctx.json {
        return output::json_line(&report);
    }

    let ms = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |v| format!("{v}ms"));
    let mut lines = vec![
        format!(
            "messages {}  delivered {}  failed {}  dead-lettered {}  pending {}  in flight {}{}",
            total_messages,
            sum(|c| c.delivered),
            sum(|c| c.failed),
            sum(|c| c.dead_lettered),
            sum(|c| c.pending),
            sum(|c| c.in_flight),
            if since > 0 {
                format!("  (since {})", crate::clock::iso8601(since))
            } else {
                String::new()
            },
        ),
        format!(
            "delivery latency   p50 {}  p95 {}  p99 {}",
            ms(delivery.p50),
            ms(delivery.p95),
            ms(delivery.p99)
        ),
        format!(
            "processing latency p50 {}  p95 {}  p99 {}",
            ms(processing.p50),
            ms(processing.p95),
            ms(processing.p99)
        ),
        format!(
            "budget rejections  hop_limit {}  ttl_expired {}  cycle_detected {}  budget_exhausted {}",
            code("hop_limit"),
            code("ttl_expired"),
            code("cycle_detected"),
            code("budget_exhausted")
        ),
        format!(
            "rate limit soft {} hard {}  breakers opened {}  backpressure warnings {} rejections {}  access denied {}",
            kind("rate_limit_soft"),
            kind("rate_limit_hard"),
            kind("breaker_opened"),
            kind("backpressure_warning"),
            kind("backpressure_rejected"),
            code("access_denied"),
        ),
    ];
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
            t.add_row(vec![
                e.endpoint.clone(),
                e.counts.total.to_string(),
                e.counts.delivered.to_string(),
                e.counts.failed.to_string(),
                e.counts.dead_lettered.to_string(),
                e.counts.pending.to_string(),
                ms(e.delivery_latency_ms.p50),
                ms(e.delivery_latency_ms.p95),
                ms(e.delivery_latency_ms.p99),
            ]);
        }
        lines.push(String::new());
        lines.push(output::table_text(&t));
    }
    output::line(&lines.join("\n"))
}
