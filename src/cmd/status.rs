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
use crate::store::index::Store;
use crate::store::reports;
use crate::store::rows::EventRow;
use crate::vocab::{Code, EventKind};

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
    /// The bridge of this home (`relay bridge`), if one ran here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bridge: Option<BridgeStatus>,
}

/// The bridge in `relay status`: its link as it last wrote it, and the
/// last reconnection handshake.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BridgeStatus {
    /// Whether its process is alive.
    pub running: bool,
    /// What it last wrote (`<home>/bridge/link.json`).
    #[serde(flatten)]
    pub link: crate::bridge::link::Status,
    /// The last `bridge_reconnected` event: queued, expired during the
    /// outage, the last id received from each peer.
    pub last_reconnect: Option<EventRow>,
}

/// Width of the pressure bar in cells.
const BAR: usize = 10;

/// The whole status: what `relay status --json` prints. It first moves
/// the journal into the index and records what the passing of time did
/// (`breakers::record_time`), waiting for the index's write lock if it must.
pub fn snapshot(ctx: &mut Ctx, events: u32) -> Result<Status> {
    let now = ctx.clock.now_ms();
    let cfg = ctx.config.reliability.circuit_breaker.clone();
    // `record_time` moves the journal into the index: a read sees every
    // event it holds.
    breakers::record_time(ctx.store()?, &cfg, now)?;
    let breakers = breakers::read(ctx, now)?;
    view(ctx, events, now, breakers)
}

/// `snapshot` for `relay serve`'s `GET /api/relay/status`, a read route,
/// which never waits for the index's write lock (nor holds up a writer
/// for long): the journal is moved in, and what time did recorded, only
/// if the lock is free right now, and the latter only when the state
/// slots say there is anything to record (a claim past its lease, a
/// breaker past its cooldown). While another process holds the lock, it
/// answers from the index as it stands (breakers shown as time left them
/// either way), and the holder, the server's stream poller or the next
/// request catches up.
pub fn snapshot_without_waiting(ctx: &mut Ctx, events: u32) -> Result<Status> {
    let now = ctx.clock.now_ms();
    let ingested = ctx.store_without_waiting()?.without_waiting(Store::ingest);
    match ingested {
        // A full disk leaves the records in the journal (as `catch_up`).
        Err(e) if e.is_full() => {}
        other => {
            other?;
        }
    }
    let breakers = breakers::snapshot_without_waiting(ctx, now)?;
    view(ctx, events, now, breakers)
}

/// The status at `now` with `breakers`, from the mailboxes, the state
/// slots and reads of the index, recording nothing.
fn view(ctx: &mut Ctx, events: u32, now: u64, breakers: Vec<BreakerInfo>) -> Result<Status> {
    let endpoints = endpoints::infos(ctx)?;
    let breakers: Vec<BreakerInfo> = breakers
        .into_iter()
        .filter(|b| b.state != "closed")
        .collect();
    let limited: Vec<LimitInfo> = limits::snapshot(ctx, now)?
        .into_iter()
        .filter(|l| l.is_limited(now))
        .collect();
    let link = crate::bridge::link::read(&ctx.home);
    let home = ctx.home.root().display().to_string();
    let store = ctx.store_without_waiting()?;
    let events = store.read(|c| reports::recent_events(c, events))?;
    let bridge = match link {
        Some(link) => {
            let last_reconnect = store.read(|c| {
                reports::events_after(
                    c,
                    0,
                    0,
                    &[EventKind::BridgeReconnected.to_string()],
                    u32::MAX,
                )
            })?;
            Some(BridgeStatus {
                running: crate::bridge::link::alive(link.pid),
                link,
                last_reconnect: last_reconnect.into_iter().last(),
            })
        }
        None => None,
    };
    let redeliveries = store.read(|c| reports::event_count(c, EventKind::Redelivered.as_str()))?;
    let codes = store.read(|c| reports::codes(c, 0))?;
    let max_deliveries = codes
        .iter()
        .find(|(c, _)| c == Code::MaxDeliveries.as_str())
        .map_or(0, |(_, n)| *n);
    Ok(Status {
        home,
        endpoints,
        breakers,
        limited_senders: limited,
        redeliveries,
        max_deliveries_dead_lettered: max_deliveries,
        events,
        bridge,
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
        bridge,
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
    if let Some(b) = &bridge {
        out.push(String::new());
        out.push(bridge_text(b, now));
    }
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

/// The bridge's lines of `relay status`.
fn bridge_text(b: &BridgeStatus, now: u64) -> String {
    let l = &b.link;
    let state = match (b.running, l.connected) {
        (false, _) => "not running (last seen)".to_string(),
        (true, true) => format!(
            "connected to NATS {}",
            l.server_version.as_deref().unwrap_or("?")
        ),
        (true, false) => "disconnected: sends are queued locally".to_string(),
    };
    let mut out = vec![format!(
        "bridge: host '{}' via {}: {state}; {} queued, {} forwarded, {} received, {} expired in the outbox",
        l.host, l.url, l.queued, l.forwarded, l.received, l.expired
    )];
    if !l.last_received.is_empty() {
        let peers: Vec<String> = l
            .last_received
            .iter()
            .map(|(h, id)| format!("{h} {id}"))
            .collect();
        out.push(format!("  last received: {}", peers.join(", ")));
    }
    if let Some(e) = &b.last_reconnect {
        out.push(format!(
            "  last reconnect {}: {}",
            ago(now, e.at),
            output::detail_text(&e.detail, now)
        ));
    }
    out.join("\n")
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
