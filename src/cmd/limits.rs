//! `relay limits`: per-sender token buckets, listed or reset.

use serde::Serialize;

use crate::cli::{LimitsAction, LimitsArgs};
use crate::clock::{ago, iso8601};
use crate::context::Ctx;
use crate::error::{Error, Result};
use crate::output;
use crate::reliability;
use crate::store::state::Slots;
use crate::subject;

/// One sender as shown by `relay limits --json` (and `status`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LimitInfo {
    /// The sender.
    pub sender: String,
    /// Whole tokens available now.
    pub tokens_left: u64,
    capacity: u64,
    window_secs: u64,
    /// Soft-threshold hits ever.
    pub soft_hits: u64,
    /// Refusals ever.
    pub hard_hits: u64,
    last_hit_at: Option<String>,
    /// The same, in ms.
    #[serde(skip)]
    last_hit_ms: Option<u64>,
}

impl LimitInfo {
    /// Whether the sender is limited now: out of tokens, or hit a threshold
    /// within the last window.
    #[must_use]
    pub fn is_limited(&self, now: u64) -> bool {
        let recent = self
            .last_hit_ms
            .is_some_and(|at| now.saturating_sub(at) < self.window_secs.saturating_mul(1000));
        self.tokens_left == 0 || recent
    }

    /// Table cells: sender, tokens, soft hits, hard hits, last hit.
    #[must_use]
    pub fn cells(&self, now: u64) -> Vec<String> {
        let last = self.last_hit_ms.unwrap_or(0);
        vec![
            self.sender.clone(),
            format!("{}/{}", self.tokens_left, self.capacity),
            self.soft_hits.to_string(),
            self.hard_hits.to_string(),
            ago(now, last),
        ]
    }
}

/// Column names matching `LimitInfo::cells`.
pub const COLUMNS: [&str; 5] = [
    "sender",
    "tokens left",
    "soft hits",
    "hard hits",
    "last hit",
];

/// Runs `relay limits`.
pub fn run(ctx: &mut Ctx, args: &LimitsArgs) -> Result<()> {
    match &args.action {
        None | Some(LimitsAction::List) => list(ctx),
        Some(LimitsAction::Reset { sender, all }) => reset(ctx, sender.as_deref(), *all),
    }
}

/// Every sender's bucket refilled to `now` under the current config.
pub fn snapshot(ctx: &mut Ctx, now: u64) -> Result<Vec<LimitInfo>> {
    let cfg = ctx.config.reliability.rate_limit.clone();
    // Buckets live in the state slots: no need to open the index.
    let mut slots = Slots::new(ctx.home.root());
    let buckets = slots.buckets()?;
    slots.release()?;
    Ok(buckets
        .into_iter()
        .map(|(sender, r)| {
            let policy = reliability::bucket_policy(&cfg, &sender);
            let tokens = r.state.refilled(&policy, now).tokens;
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            LimitInfo {
                tokens_left: (tokens + 1e-9).floor() as u64,
                capacity: policy.capacity.round() as u64,
                window_secs: cfg.window_secs,
                soft_hits: r.soft_hits,
                hard_hits: r.hard_hits,
                last_hit_at: r.last_hit_at.map(iso8601),
                last_hit_ms: r.last_hit_at,
                sender,
            }
        })
        .collect())
}

fn list(ctx: &mut Ctx) -> Result<()> {
    let now = ctx.clock.now_ms();
    let infos = snapshot(ctx, now)?;
    if ctx.json {
        return output::json_line(&serde_json::json!({
            "enabled": ctx.config.reliability.rate_limit.enabled,
            "limits": infos
        }));
    }
    if infos.is_empty() {
        eprintln!("relay: no sender has sent yet");
        return Ok(());
    }
    let mut t = output::table(&COLUMNS);
    for i in &infos {
        t.add_row(i.cells(now));
    }
    output::print_table(&t)
}

fn reset(ctx: &mut Ctx, sender: Option<&str>, all: bool) -> Result<()> {
    let n = reset_senders(ctx, sender, all)?;
    if ctx.json {
        return output::json_line(&serde_json::json!({ "reset": n }));
    }
    eprintln!("relay: reset {n} sender(s)");
    Ok(())
}

/// Refills the bucket of `sender`, or every one with `all`; how many were
/// reset. Also `relay serve`'s `POST /api/relay/limits/reset`.
pub fn reset_senders(ctx: &Ctx, sender: Option<&str>, all: bool) -> Result<usize> {
    if let Some(s) = sender {
        subject::validate_subject(s, "sender")?;
    }
    let mut slots = Slots::new(ctx.home.root());
    let n = slots.reset_buckets(if all { None } else { sender })?;
    slots.release()?;
    if n == 0 && !all {
        return Err(Error::Data(format!(
            "no rate-limit state for sender '{}'; see senders with: relay limits",
            sender.unwrap_or_default()
        )));
    }
    Ok(n)
}
