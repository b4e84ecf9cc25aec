//! `relay status`: one screen of the bus: endpoints with depth and pressure,
//! breakers that are not closed, senders that hit their limit, recent events.

use serde::Serialize;

use crate::cli::StatusArgs;
use crate::clock::ago;
use crate::cmd::breakers::{self, BreakerInfo};
use crate::cmd::endpoints::{self, EndpointInfo};
use crate::cmd::limits::{self, LimitInfo};
use crate::context::Ctx;
use crate::error::Result;
use crate::output;
use crate::store::{EventRow, reports};

/// `relay status --json` (and the HTTP API's `/api/relay/status`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// The relay home.
    pub home: String,
    /// Every endpoint with depth and pressure.
    pub endpoints: Vec<EndpointInfo>,
    /// Breakers that are not closed.
    pub breakers: Vec<BreakerInfo>,
    /// Senders out of tokens or with a recent hit.
    pub limited_senders: Vec<LimitInfo>,
    /// Claims whose lease ran out and that went back to `new/`, ever (as
    /// far as the event log goes back).
    pub redeliveries: u64,
    /// Messages dead-lettered as `max_deliveries`, ever (likewise).
    pub max_deliveries_dead_lettered: u64,
    /// Most recent events, newest first.
    pub events: Vec<EventRow>,
}

/// Width of the pressure bar in cells.
const BAR: usize = 10;

/// The whole status: what `relay status --json` prints and the HTTP API serves.
pub fn snapshot(ctx: &mut Ctx, events: u32) -> Result<Status> {
    let now = ctx.clock.now_ms();
    let endpoints = endpoints::infos(ctx)?;
    let breakers: Vec<BreakerInfo> = breakers::snapshot(ctx, now)?
        .into_iter()
        .filter(|b| b.state != "closed")
        .collect();
    let limited: Vec<LimitInfo> = limits::snapshot(ctx, now)?
        .into_iter()
        .filter(|l| l.is_limited(now))
        .collect();
    let events = {
        let tx = ctx.store()?.begin()?;
        let events = tx.recent_events(events)?;
        tx.commit()?;
        events
    };
    let kinds = ctx.store()?.read(|c| reports::event_kinds(c, 0))?;
    let codes = ctx.store()?.read(|c| reports::codes(c, 0))?;
    let count =
        |v: &[(String, u64)], k: &str| v.iter().find(|(c, _)| c == k).map_or(0, |(_, n)| *n);
    Ok(Status {
        home: ctx.home.root().display().to_string(),
        endpoints,
        breakers,
        limited_senders: limited,
        redeliveries: count(&kinds, "redelivered"),
        max_deliveries_dead_lettered: count(&codes, crate::lease::MAX_DELIVERIES),
        events,
    })
}

/// Runs `relay status`.
pub fn run(ctx: &mut Ctx, args: &StatusArgs) -> Result<()> {
    let st = snapshot(ctx, args.events)?;
    if ctx.json {
        return output::json_line(&st);
    }
    let now = ctx.clock.now_ms();
    let Status {
        endpoints,
        breakers,
        limited_senders: limited,
        events,
        redeliveries,
        max_deliveries_dead_lettered,
        ..
    } = st;
    let mut out = Vec::new();
    out.push(format!("relay home {}", ctx.home.root().display()));
    out.push(String::new());
    if endpoints.is_empty() {
        out.push("no endpoints (create one with: relay endpoints add SUBJECT)".into());
    } else {
        let mut t = output::table(&["endpoint", "depth", "pressure", "failed", "last activity"]);
        for e in &endpoints {
            t.add_row(vec![
                e.subject.clone(),
                e.capacity
                    .map_or(e.depth.to_string(), |c| format!("{}/{c}", e.depth)),
                e.pressure.map_or_else(|| "off".to_string(), bar),
                e.failed.to_string(),
                ago(now, e.last_activity_ms),
            ]);
        }
        out.push(output::table_text(&t));
    }
    out.push(String::new());
    if breakers.is_empty() {
        out.push("breakers: all closed".into());
    } else {
        out.push("breakers not closed:".into());
        let mut t = output::table(&breakers::COLUMNS);
        for b in &breakers {
            t.add_row(b.cells(now));
        }
        out.push(output::table_text(&t));
    }
    out.push(String::new());
    if limited.is_empty() {
        out.push("rate limits: no sender limited".into());
    } else {
        out.push("rate-limited senders:".into());
        let mut t = output::table(&limits::COLUMNS);
        for l in &limited {
            t.add_row(l.cells(now));
        }
        out.push(output::table_text(&t));
    }
    out.push(String::new());
    out.push(format!(
        "redeliveries: {redeliveries} (claims whose lease ran out, back in new/); {max_deliveries_dead_lettered} dead-lettered as max_deliveries"
    ));
    out.push(String::new());
    if events.is_empty() {
        out.push("no events yet".into());
    } else {
        out.push("recent events:".into());
        let mut t = output::table(&["when", "event", "sender", "endpoint", "detail"]);
        for e in &events {
            t.add_row(vec![
                ago(now, e.at),
                e.kind.clone(),
                e.sender.clone().unwrap_or_default(),
                e.endpoint.clone().unwrap_or_default(),
                output::detail_text(&e.detail, now),
            ]);
        }
        out.push(output::table_text(&t));
    }
    output::line(&out.join("\n"))
}

/// `[#######---]  72%`
fn bar(pressure: f64) -> String {
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let filled = ((pressure.clamp(0.0, 1.0) * BAR as f64).round() as usize).min(BAR);
    format!(
        "[{}{}] {:>3.0}%",
        "#".repeat(filled),
        "-".repeat(BAR - filled),
        pressure * 100.0
    )
}
