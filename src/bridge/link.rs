//! The link to NATS as this home sees it: its own breaker (sender
//! `relay.bridge`, endpoint `nats.<host>`, shown by `relay breakers`), the
//! connect / disconnect / reconnect events with the reconnection handshake
//! (what was queued, what expired during the outage, the last id received
//! from each peer), and `<home>/bridge/link.json`, which `relay status`
//! shows while a bridge runs.

use serde::{Deserialize, Serialize};

use crate::breaker::{Decision, Event as BreakerEvent};
use crate::context::Ctx;
use crate::error::Result;
use crate::reliability;
use crate::store::journal::Outbox;
use crate::store::rows::Event;
use crate::store::state::Slots;

/// Sender of the link's breaker pair.
pub const LINK_SENDER: &str = "relay.bridge";

/// Endpoint of the link's breaker pair for `host`.
#[must_use]
pub fn link_endpoint(host: &str) -> String {
    format!("nats.{host}")
}

/// `<home>/bridge/link.json`: the bridge's view of its link.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// This host.
    pub host: String,
    /// The NATS URL.
    pub url: String,
    /// Process id of the bridge.
    pub pid: u32,
    /// Whether it is connected now.
    pub connected: bool,
    /// The server's version, once connected.
    pub server_version: Option<String>,
    /// Since when (ms) the link is in its present state.
    pub since: u64,
    /// How many reconnects it made.
    pub reconnects: u64,
    /// Copies waiting in the outbox.
    pub queued: u64,
    /// Copies that expired in the outbox since the bridge started.
    pub expired: u64,
    /// Copies forwarded since the bridge started.
    pub forwarded: u64,
    /// Messages applied from the stream since the bridge started.
    pub received: u64,
    /// Last message id received per peer host.
    pub last_received: std::collections::BTreeMap<String, String>,
}

/// Reads `link.json` of a home, if a bridge wrote one.
#[must_use]
pub fn read(home: &crate::home::Home) -> Option<Status> {
    let path = crate::store::bridge::dir(home.root()).join("link.json");
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

/// Writes `link.json` (atomically).
pub fn write(home: &crate::home::Home, s: &Status) -> Result<()> {
    let dir = crate::store::bridge::dir(home.root());
    crate::home::create_dir_secure(&dir, false)?;
    let path = dir.join("link.json");
    let tmp = dir.join(format!("link.json.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let bytes = serde_json::to_vec_pretty(s)
        .map_err(|e| crate::error::Error::Data(format!("cannot encode link.json: {e}")))?;
    crate::home::write_new_file(&tmp, &bytes, false)?;
    std::fs::rename(&tmp, &path).map_err(|e| crate::error::Error::io("cannot replace", &path, e))
}

/// Whether process `pid` is alive (a bridge that was killed leaves its
/// `link.json` behind).
#[must_use]
pub fn alive(pid: u32) -> bool {
    let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return false;
    };
    rustix::process::test_kill_process(pid).is_ok()
}

/// Removes `link.json` (the bridge stopped).
pub fn clear(home: &crate::home::Home) {
    let _ = std::fs::remove_file(crate::store::bridge::dir(home.root()).join("link.json"));
}

/// Records a link event: `kind` with `detail`.
pub fn event(
    ctx: &Ctx,
    host: &str,
    kind: crate::vocab::EventKind,
    detail: serde_json::Value,
    now: u64,
) -> Result<()> {
    let mut out = Outbox::default();
    let ep = link_endpoint(host);
    out.event(
        &Event {
            kind,
            sender: Some(LINK_SENDER),
            endpoint: Some(&ep),
            message_id: None,
            detail,
        },
        now,
    );
    out.flush(ctx.home.root()).map(|_| ())
}

/// Asks the link's breaker whether to try NATS now: `Err(retry_after_ms)` while open.
pub fn may_try(ctx: &Ctx, host: &str, now: u64) -> Result<std::result::Result<(), u64>> {
    step(ctx, host, BreakerEvent::Send, now).map(|d| match d {
        Decision::Reject { retry_after_ms } => Err(retry_after_ms),
        _ => Ok(()),
    })
}

/// Closes the link's breaker: the connection is back (a reset, recorded
/// as the breaker's transition), so the queue drains now, not after a cooldown.
pub fn back(ctx: &Ctx, host: &str, now: u64) -> Result<()> {
    let (mut slots, mut out) = (Slots::new(ctx.home.root()), Outbox::default());
    let ep = link_endpoint(host);
    let cfg = &ctx.config.reliability.circuit_breaker;
    if slots.breaker(LINK_SENDER, &ep)?.phase != crate::breaker::Phase::Closed {
        let reset = BreakerEvent::Reset;
        reliability::breaker_step(&mut slots, &mut out, cfg, LINK_SENDER, &ep, reset, now)?;
    }
    out.commit(&mut slots, ctx.home.root()).map(|_| ())
}

/// Tells the link's breaker how a try went.
pub fn outcome(ctx: &Ctx, host: &str, ok: bool, now: u64) -> Result<()> {
    let ev = if ok {
        BreakerEvent::Success { probe: true }
    } else {
        BreakerEvent::Failure { probe: true }
    };
    step(ctx, host, ev, now).map(|_| ())
}

fn step(ctx: &Ctx, host: &str, ev: BreakerEvent, now: u64) -> Result<Decision> {
    let (mut slots, mut out) = (Slots::new(ctx.home.root()), Outbox::default());
    let cfg = &ctx.config.reliability.circuit_breaker;
    let ep = link_endpoint(host);
    let d = reliability::breaker_step(&mut slots, &mut out, cfg, LINK_SENDER, &ep, ev, now)?;
    out.commit(&mut slots, ctx.home.root())?;
    Ok(d)
}
