//! `GET /metrics`: Prometheus text exposition (version 0.0.4), names
//! prefixed `relay_`.

use crate::cmd::{breakers, endpoints, limits};
use crate::context::Ctx;
use crate::error::Result;
use crate::store::reports;

/// Delivery-latency histogram bounds (ms).
const LATENCY_BOUNDS_MS: [u64; 10] = [1, 5, 10, 50, 100, 500, 1000, 5000, 30_000, 300_000];

/// The server's own gauges, read when the request came.
#[derive(Debug, Clone, Copy)]
pub(super) struct Serving {
    /// Connections open.
    pub connections: usize,
    /// SSE streams open.
    pub streams: usize,
}

/// Prometheus text exposition (version 0.0.4), names prefixed `relay_`.
pub(super) fn text(ctx: &mut Ctx, serving: &Serving) -> Result<String> {
    let now = ctx.clock.now_ms();
    let mut t = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: Vec<(String, String)>| {
        t.push_str(&format!(
            "# HELP relay_{name} {help}\n# TYPE relay_{name} {kind}\n"
        ));
        for (labels, value) in samples {
            t.push_str(&format!("relay_{name}{labels} {value}\n"));
        }
    };
    let label = |pairs: &[(&str, &str)]| -> String {
        let inner: Vec<String> = pairs
            .iter()
            .map(|(k, v)| {
                format!(
                    "{k}=\"{}\"",
                    v.replace('\\', "\\\\")
                        .replace('"', "\\\"")
                        .replace('\n', "\\n")
                )
            })
            .collect();
        format!("{{{}}}", inner.join(","))
    };
    let eps = endpoints::infos(ctx)?;
    metric(
        "mailbox_depth",
        "gauge",
        "Messages in new/ plus cur/.",
        eps.iter()
            .map(|e| (label(&[("endpoint", &e.subject)]), e.depth.to_string()))
            .collect(),
    );
    metric(
        "mailbox_capacity",
        "gauge",
        "Backpressure capacity (maxMailboxSize).",
        eps.iter()
            .filter_map(|e| Some((label(&[("endpoint", &e.subject)]), e.capacity?.to_string())))
            .collect(),
    );
    metric(
        "mailbox_pressure",
        "gauge",
        "Depth divided by capacity.",
        eps.iter()
            .filter_map(|e| Some((label(&[("endpoint", &e.subject)]), e.pressure?.to_string())))
            .collect(),
    );
    metric(
        "dead_letters",
        "gauge",
        "Dead letters in failed/.",
        eps.iter()
            .map(|e| (label(&[("endpoint", &e.subject)]), e.failed.to_string()))
            .collect(),
    );
    let brs = breakers::snapshot_without_waiting(ctx, now)?;
    let pair =
        |b: &breakers::BreakerInfo| label(&[("sender", &b.sender), ("endpoint", &b.endpoint)]);
    metric(
        "breaker_state",
        "gauge",
        "Circuit breaker per pair: 0 closed, 1 half-open, 2 open.",
        brs.iter()
            .map(|b| {
                let state = match b.state {
                    "open" => "2",
                    "half-open" => "1",
                    _ => "0",
                };
                (pair(b), state.to_string())
            })
            .collect(),
    );
    metric(
        "breaker_trips_total",
        "counter",
        "Times the pair's breaker opened.",
        brs.iter().map(|b| (pair(b), b.trips.to_string())).collect(),
    );
    let lims = limits::snapshot(ctx, now)?;
    metric(
        "rate_limit_tokens",
        "gauge",
        "Tokens left in the sender's bucket.",
        lims.iter()
            .map(|l| (label(&[("sender", &l.sender)]), l.tokens_left.to_string()))
            .collect(),
    );
    metric(
        "rate_limit_hits_total",
        "counter",
        "Rate-limit threshold hits by kind.",
        lims.iter()
            .flat_map(|l| {
                [
                    (
                        label(&[("sender", &l.sender), ("kind", "soft")]),
                        l.soft_hits.to_string(),
                    ),
                    (
                        label(&[("sender", &l.sender), ("kind", "hard")]),
                        l.hard_hits.to_string(),
                    ),
                ]
            })
            .collect(),
    );
    let (counts, n, sum) = ctx
        .store()?
        .read(|c| reports::delivery_histogram(c, &LATENCY_BOUNDS_MS))?;
    let mut hist: Vec<(String, String)> = LATENCY_BOUNDS_MS
        .iter()
        .zip(&counts)
        .map(|(b, c)| {
            (
                label(&[("le", &format!("{}", *b as f64 / 1000.0))]),
                c.to_string(),
            )
        })
        .collect();
    hist.push((label(&[("le", "+Inf")]), n.to_string()));
    t.push_str("# HELP relay_delivery_latency_seconds Time from send to claim.\n# TYPE relay_delivery_latency_seconds histogram\n");
    for (l, v) in hist {
        t.push_str(&format!("relay_delivery_latency_seconds_bucket{l} {v}\n"));
    }
    t.push_str(&format!(
        "relay_delivery_latency_seconds_sum {}\nrelay_delivery_latency_seconds_count {n}\n",
        sum as f64 / 1000.0
    ));
    t.push_str(&format!(
        "# HELP relay_serve_connections Connections open to this server.\n# TYPE relay_serve_connections gauge\nrelay_serve_connections {}\n",
        serving.connections
    ));
    t.push_str(&format!(
        "# HELP relay_serve_streams SSE streams open on this server.\n# TYPE relay_serve_streams gauge\nrelay_serve_streams {}\n",
        serving.streams
    ));
    Ok(t)
}
