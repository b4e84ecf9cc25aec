//! The reliability layer's I/O side: applies the pure state machines
//! (`bucket`, `breaker`) to the state slots (`Slots`, locked for the
//! read-decide-write) and adds every decision as an event to an `Outbox`,
//! which the caller puts in the journal or an index transaction.

use serde_json::json;

use crate::breaker::{self, Decision as BreakerDecision, Event as BreakerEvent, Transition};
use crate::bucket;
use crate::clock::human_ms;
use crate::config::{CircuitBreaker, RateLimit};
use crate::error::Result;
use crate::store::index::Tx;
use crate::store::journal::Outbox;
use crate::store::rows::Event;
use crate::store::state::Slots;
use crate::vocab::EventKind;

/// What the rate limiter said about one send.
#[derive(Debug, Clone, PartialEq)]
pub enum RateOutcome {
    /// Admitted quietly (or the limiter is disabled).
    Admit,
    /// Admitted with a warning.
    Soft(String),
    /// Refused.
    Hard {
        /// The complete user-facing message.
        message: String,
        /// When a token will be there.
        retry_after_ms: u64,
    },
}

/// The bucket policy for `sender` under `cfg`.
#[must_use]
pub fn bucket_policy(cfg: &RateLimit, sender: &str) -> bucket::Policy {
    bucket::Policy::new(
        cfg.limit_for(sender),
        cfg.window_secs,
        cfg.burst,
        cfg.soft_limit_ratio,
    )
}

/// Takes one token from `sender`'s persisted bucket and records the hit.
pub fn rate_limit(
    slots: &mut Slots,
    out: &mut Outbox,
    cfg: &RateLimit,
    sender: &str,
    now: u64,
) -> Result<RateOutcome> {
    if !cfg.enabled {
        return Ok(RateOutcome::Admit);
    }
    let policy = bucket_policy(cfg, sender);
    let state = slots
        .bucket(sender)?
        .unwrap_or_else(|| bucket::State::full(&policy, now));
    let (next, decision) = bucket::take(&state, &policy, now);
    let window = cfg.window_secs;
    let refill = cfg.limit_for(sender);
    let (outcome, hit, kind, detail) = match decision {
        bucket::Decision::Admit => (RateOutcome::Admit, None, None, json!({})),
        bucket::Decision::Soft { used, capacity } => {
            let left = capacity.saturating_sub(used);
            (
                RateOutcome::Soft(format!(
                    "sender '{sender}' has {left} of {capacity} rate-limit tokens left (the bucket refills {refill} per {window}s)"
                )),
                Some(true),
                Some(EventKind::RateLimitSoft),
                json!({ "tokensLeft": left, "capacity": capacity, "windowSecs": window }),
            )
        }
        bucket::Decision::Hard {
            capacity,
            retry_after_ms,
        } => (
            RateOutcome::Hard {
                message: rate_refusal(sender, capacity, refill, window, retry_after_ms),
                retry_after_ms,
            },
            Some(false),
            Some(EventKind::RateLimitHard),
            json!({ "tokensLeft": 0, "capacity": capacity, "windowSecs": window, "retryAfterMs": retry_after_ms }),
        ),
    };
    slots.put_bucket(sender, &next, hit, now)?;
    if let Some(kind) = kind {
        out.event(
            &Event {
                kind,
                sender: Some(sender),
                endpoint: None,
                message_id: None,
                detail,
            },
            now,
        );
    }
    Ok(outcome)
}

/// The user-facing refusal of an empty bucket: when to retry, and what to
/// change instead (the knob, a manual refill, batching).
#[must_use]
pub fn rate_refusal(
    sender: &str,
    capacity: u64,
    refill: u64,
    window_secs: u64,
    retry_after_ms: u64,
) -> String {
    format!(
        "rate limit exceeded for sender '{sender}': 0 of {capacity} tokens left (the bucket refills {refill} per {window_secs}s); retry in {}; to allow more, raise reliability.rateLimit.maxPerWindow (or a perSenderOverrides entry), refill it now with 'relay limits reset {sender}', or send bulk work in one 'relay send --batch'",
        human_ms(retry_after_ms)
    )
}

/// The breaker policy under `cfg`.
#[must_use]
pub fn breaker_policy(cfg: &CircuitBreaker) -> breaker::Policy {
    breaker::Policy {
        failure_threshold: cfg.failure_threshold,
        cooldown_ms: cfg.cooldown_ms,
        half_open_probes: cfg.half_open_probe_count,
        success_to_close: cfg.success_to_close,
        backoff: cfg.cooldown_backoff,
        max_cooldown_ms: cfg.max_cooldown_ms,
    }
}

/// Applies `event` to the (sender, endpoint) breaker, persists it, and
/// records its transitions. A disabled breaker admits everything.
/// `force` applies operator events even when breakers are disabled.
pub fn breaker_step(
    slots: &mut Slots,
    out: &mut Outbox,
    cfg: &CircuitBreaker,
    sender: &str,
    endpoint: &str,
    event: BreakerEvent,
    now: u64,
) -> Result<BreakerDecision> {
    let operator = matches!(event, BreakerEvent::Reset | BreakerEvent::ForceOpen { .. });
    if !cfg.enabled && !operator {
        return Ok(match event {
            BreakerEvent::Send => BreakerDecision::Admit,
            _ => BreakerDecision::Noted,
        });
    }
    let policy = breaker_policy(cfg);
    let state = slots.breaker(sender, endpoint)?;
    let (next, decision, transitions) = breaker::step(&state, event, &policy, now);
    if next != state {
        slots.put_breaker(sender, endpoint, &next, now)?;
    }
    for t in transitions {
        // A breaker half-opens when its cooldown ends, whenever that is noticed.
        let at = if t == Transition::HalfOpened {
            state.next_probe_at.min(now)
        } else {
            now
        };
        let kind = match t {
            Transition::Opened => EventKind::BreakerOpened,
            Transition::HalfOpened => EventKind::BreakerHalfOpen,
            Transition::Closed => EventKind::BreakerClosed,
        };
        out.event(
            &Event {
                kind,
                sender: Some(sender),
                endpoint: Some(endpoint),
                message_id: None,
                detail: json!({
                    "failures": next.failures,
                    "trips": next.total_trips,
                    "nextProbeAt": (next.phase != breaker::Phase::Closed).then_some(next.next_probe_at),
                    "manual": operator,
                }),
            },
            at,
        );
    }
    Ok(decision)
}

/// The user-facing refusal of an open or saturated half-open breaker.
#[must_use]
pub fn breaker_refusal(
    sender: &str,
    endpoint: &str,
    phase: breaker::Phase,
    retry_after_ms: u64,
) -> String {
    match phase {
        breaker::Phase::HalfOpen => format!(
            "circuit half-open for {sender} -> {endpoint}: probes in flight; retry in {}; to close it now: relay breakers reset {sender} {endpoint}",
            human_ms(retry_after_ms)
        ),
        _ => format!(
            "circuit open for {sender} -> {endpoint}; next probe in {}; to close it now: relay breakers reset {sender} {endpoint}",
            human_ms(retry_after_ms)
        ),
    }
}

/// Counts claims held past their lease (on `endpoint`, or everywhere) as
/// delivery failures of their pairs, once each. Returns how many.
pub fn observe_leases(
    tx: &mut Tx<'_>,
    cfg: &CircuitBreaker,
    endpoint: Option<&str>,
    now: u64,
) -> Result<usize> {
    // Consumers journal their claims' leases and lower `lease_due` under the
    // state lock (`consumer`): with the lock held, whatever the journal got
    // before is ingested here, and whatever comes after lowers the deadline
    // written below. So `lease_due` never misses a lease.
    tx.slots.lock()?;
    tx.ingest_tail()?;
    let expired = tx.expired_leases(endpoint, now)?;
    let mut out = Outbox::default();
    for lease in &expired {
        out.event(
            &Event {
                kind: EventKind::LeaseExpired,
                sender: Some(&lease.sender),
                endpoint: Some(&lease.endpoint),
                message_id: Some(&lease.id),
                detail: json!({}),
            },
            now,
        );
        breaker_step(
            &mut tx.slots,
            &mut out,
            cfg,
            &lease.sender,
            &lease.endpoint,
            BreakerEvent::Failure { probe: lease.probe },
            now,
        )?;
    }
    tx.record(&mut out)?;
    // Sends look at these deadlines to know when to open the index again.
    let next = tx.lease_deadlines(endpoint)?;
    let state = tx.slots.lock()?;
    let due = &state.get().lease_due;
    match endpoint {
        Some(ep) if due.get(ep) != next.get(ep) => {
            let due = &mut state.get_mut().lease_due;
            match next.get(ep) {
                Some(&at) => due.insert(ep.to_string(), at),
                None => due.remove(ep),
            };
        }
        None if *due != next => state.get_mut().lease_due = next,
        _ => {}
    }
    tx.refresh_claims_due(endpoint)?;
    Ok(expired.len())
}
