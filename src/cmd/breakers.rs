//! `relay breakers`: list, reset and open the per-(sender, endpoint) circuit breakers.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::breaker::{self, Event as BreakerEvent, Phase};
use crate::cli::{BreakersAction, BreakersArgs};
use crate::clock::{human_ms, iso8601};
use crate::config::CircuitBreaker;
use crate::context::Ctx;
use crate::error::{Error, Result};
use crate::output;
use crate::reliability;
use crate::store::index::Store;
use crate::store::journal::Outbox;
use crate::store::state::Slots;
use crate::subject;

/// One breaker as shown by `relay breakers --json` (and `status`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BreakerInfo {
    /// Sender of the pair.
    pub sender: String,
    /// Endpoint of the pair.
    pub endpoint: String,
    /// Effective state now: `closed`, `open` or `half-open`.
    pub state: &'static str,
    consecutive_failures: u32,
    probes_in_flight: u32,
    opened_at: Option<String>,
    next_probe_at: Option<String>,
    next_probe_in_ms: Option<u64>,
    /// Times it opened, ever.
    pub trips: u32,
    /// `opened_at` in ms (0 if never), for tables.
    #[serde(skip)]
    opened_ms: u64,
}

impl BreakerInfo {
    /// The view of a stored breaker at `now`.
    #[must_use]
    pub fn new(sender: String, endpoint: String, s: &breaker::State, now: u64) -> Self {
        let phase = breaker::effective_phase(s, now);
        let waiting = phase == Phase::Open;
        BreakerInfo {
            sender,
            endpoint,
            state: phase.as_str(),
            consecutive_failures: s.failures,
            probes_in_flight: if phase == Phase::HalfOpen && s.phase == Phase::HalfOpen {
                s.probes_in_flight
            } else {
                0
            },
            opened_at: (s.opened_at > 0).then(|| iso8601(s.opened_at)),
            next_probe_at: waiting.then(|| iso8601(s.next_probe_at)),
            next_probe_in_ms: waiting.then(|| s.next_probe_at.saturating_sub(now)),
            trips: s.total_trips,
            opened_ms: s.opened_at,
        }
    }

    /// Table cells: pair, state, failures, opened, next probe, trips.
    #[must_use]
    pub fn cells(&self, now: u64) -> Vec<String> {
        vec![
            format!("{} -> {}", self.sender, self.endpoint),
            self.state.to_string(),
            self.consecutive_failures.to_string(),
            crate::clock::ago(now, self.opened_ms),
            self.next_probe_in_ms
                .map_or_else(|| "-".to_string(), |ms| format!("in {}", human_ms(ms))),
            self.trips.to_string(),
        ]
    }
}

/// Column names matching `BreakerInfo::cells`.
pub const COLUMNS: [&str; 6] = ["pair", "state", "failures", "opened", "next probe", "trips"];

/// Runs `relay breakers`.
pub fn run(ctx: &mut Ctx, args: &BreakersArgs) -> Result<()> {
    match &args.action {
        None | Some(BreakersAction::List) => list(ctx),
        Some(BreakersAction::Reset {
            sender,
            endpoint,
            all,
        }) => reset(ctx, sender.as_deref(), endpoint.as_deref(), *all),
        Some(BreakersAction::Open {
            sender,
            endpoint,
            duration,
        }) => open(ctx, sender, endpoint, *duration),
    }
}

/// Stored breakers as seen at `now`, after counting expired leases.
pub fn snapshot(ctx: &mut Ctx, now: u64) -> Result<Vec<BreakerInfo>> {
    let cfg = ctx.config.reliability.circuit_breaker.clone();
    // Record what the passing of time did before showing it.
    record_time(ctx.store()?, &cfg, now)?;
    read(ctx, now)
}

/// Records what the passing of time did by `now`: claims held past their
/// lease counted as failures of their pairs (`observe_leases`), breakers
/// whose cooldown ended half-opened. Takes the index's write lock.
pub fn record_time(store: &mut Store, cfg: &CircuitBreaker, now: u64) -> Result<()> {
    let mut tx = store.begin()?;
    reliability::observe_leases(&mut tx, cfg, None, now)?;
    let mut out = Outbox::default();
    for (s, e) in tx.slots.breaker_pairs(None, None)? {
        reliability::breaker_step(
            &mut tx.slots,
            &mut out,
            cfg,
            &s,
            &e,
            BreakerEvent::Observe,
            now,
        )?;
        tx.record(&mut out)?;
    }
    tx.commit()
}

/// `snapshot` for `relay serve`'s read routes, which never wait for the
/// index's write lock: what time did is recorded only when `time_passed`
/// says there is anything and the lock is free right now; either way the
/// breakers are shown as time left them (`BreakerInfo::new`).
pub fn snapshot_without_waiting(ctx: &mut Ctx, now: u64) -> Result<Vec<BreakerInfo>> {
    if time_passed(ctx, now)? {
        let cfg = ctx.config.reliability.circuit_breaker.clone();
        let store = ctx.store_without_waiting()?;
        store.without_waiting(|s| record_time(s, &cfg, now))?;
    }
    read(ctx, now)
}

/// Whether `record_time` would find anything to record at `now`, read
/// from the state slots alone (no index, no write): an endpoint whose
/// earliest uncounted lease deadline has passed (`lease_due`, which never
/// misses a lease), or an open breaker whose cooldown has ended.
pub fn time_passed(ctx: &Ctx, now: u64) -> Result<bool> {
    let breakers_on = ctx.config.reliability.circuit_breaker.enabled;
    let mut slots = Slots::new(ctx.home.root());
    let state = slots.lock()?.get();
    let due = state.lease_past_due(state.lease_due.keys(), now)
        || breakers_on
            && state
                .breakers
                .values()
                .flat_map(BTreeMap::values)
                .any(|b| breaker::effective_phase(&b.state, now) != b.state.phase);
    slots.release()?;
    Ok(due)
}

/// Every stored breaker as it stands at `now`, recording nothing.
pub fn read(ctx: &Ctx, now: u64) -> Result<Vec<BreakerInfo>> {
    let mut slots = Slots::new(ctx.home.root());
    let pairs = slots.breakers()?;
    slots.release()?;
    Ok(pairs
        .into_iter()
        .flat_map(|(sender, m)| {
            m.into_iter()
                .map(move |(endpoint, b)| BreakerInfo::new(sender.clone(), endpoint, &b.state, now))
        })
        .collect())
}

fn list(ctx: &mut Ctx) -> Result<()> {
    let now = ctx.clock.now_ms();
    let infos = snapshot(ctx, now)?;
    if ctx.json {
        return output::json_line(&serde_json::json!({ "breakers": infos }));
    }
    if infos.is_empty() {
        eprintln!("relay: no breaker has state yet (every pair is closed)");
        return Ok(());
    }
    let mut t = output::table(&COLUMNS);
    for i in &infos {
        t.add_row(i.cells(now));
    }
    output::print_table(&t)
}

fn reset(ctx: &mut Ctx, sender: Option<&str>, endpoint: Option<&str>, all: bool) -> Result<()> {
    let names = reset_pairs(ctx, sender, endpoint, all)?;
    if ctx.json {
        return output::json_line(&serde_json::json!({ "reset": names }));
    }
    eprintln!("relay: reset {} breaker(s)", names.len());
    Ok(())
}

/// Closes the breakers of `sender` (to `endpoint`), or every one with
/// `all`; the pairs reset (`SENDER -> ENDPOINT`). Also `relay serve`'s
/// `POST /api/relay/breakers/reset`.
pub fn reset_pairs(
    ctx: &mut Ctx,
    sender: Option<&str>,
    endpoint: Option<&str>,
    all: bool,
) -> Result<Vec<String>> {
    if let Some(s) = sender {
        subject::validate_subject(s, "sender")?;
    }
    if let Some(e) = endpoint {
        subject::validate_subject(e, "endpoint")?;
    }
    let now = ctx.clock.now_ms();
    let cfg = ctx.config.reliability.circuit_breaker.clone();
    let mut tx = ctx.store()?.begin()?;
    let pairs = if all {
        tx.slots.breaker_pairs(None, None)?
    } else {
        tx.slots.breaker_pairs(sender, endpoint)?
    };
    if pairs.is_empty() && !all {
        let what = match endpoint {
            Some(e) => format!("{} -> {e}", sender.unwrap_or("*")),
            None => format!("sender '{}'", sender.unwrap_or("*")),
        };
        return Err(Error::Data(format!(
            "no breaker state for {what}; see them with: relay breakers"
        )));
    }
    let mut out = Outbox::default();
    for (s, e) in &pairs {
        reliability::breaker_step(
            &mut tx.slots,
            &mut out,
            &cfg,
            s,
            e,
            BreakerEvent::Reset,
            now,
        )?;
        tx.record(&mut out)?;
    }
    tx.commit()?;
    Ok(pairs.iter().map(|(s, e)| format!("{s} -> {e}")).collect())
}

fn open(
    ctx: &mut Ctx,
    sender: &str,
    endpoint: &str,
    duration: Option<std::time::Duration>,
) -> Result<()> {
    let (ms, until) = force_open(ctx, sender, endpoint, duration)?;
    if ctx.json {
        return output::json_line(&serde_json::json!({
            "sender": sender, "endpoint": endpoint, "state": "open", "nextProbeAt": iso8601(until)
        }));
    }
    eprintln!(
        "relay: breaker {sender} -> {endpoint} open for {}",
        human_ms(ms)
    );
    Ok(())
}

/// Opens the breaker of (`sender`, `endpoint`) for `duration` (default:
/// the cooldown); how long (ms) and until when. Also `relay serve`'s
/// `POST /api/relay/breakers/open`.
pub fn force_open(
    ctx: &mut Ctx,
    sender: &str,
    endpoint: &str,
    duration: Option<std::time::Duration>,
) -> Result<(u64, u64)> {
    subject::validate_subject(sender, "sender")?;
    subject::validate_subject(endpoint, "endpoint")?;
    let now = ctx.clock.now_ms();
    let cfg = ctx.config.reliability.circuit_breaker.clone();
    let ms = duration.map_or(cfg.cooldown_ms, crate::clock::ms);
    let until = now.saturating_add(ms);
    let mut tx = ctx.store()?.begin()?;
    let mut out = Outbox::default();
    reliability::breaker_step(
        &mut tx.slots,
        &mut out,
        &cfg,
        sender,
        endpoint,
        BreakerEvent::ForceOpen { until },
        now,
    )?;
    tx.record(&mut out)?;
    tx.commit()?;
    Ok((ms, until))
}
