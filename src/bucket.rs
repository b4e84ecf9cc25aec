//! The per-sender token bucket: a pure function of (state, policy, now).
//!
//! Persisting the state and making the read-decide-write atomic across
//! processes is the caller's job (`store.rs`, inside `BEGIN IMMEDIATE`).

/// What the bucket is configured to do for one sender.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    /// Tokens a full bucket holds (a fresh sender may send this many at once).
    pub capacity: f64,
    /// Tokens added per millisecond.
    pub refill_per_ms: f64,
    /// Fraction of the capacity in use at which senders are warned.
    pub soft_ratio: f64,
    /// The configured window, for messages ("refills 20 per 60s").
    pub window_secs: u64,
}

impl Policy {
    /// `max_per_window` messages per `window_secs`, with an optional burst
    /// capacity overriding `max_per_window`.
    #[must_use]
    pub fn new(max_per_window: u64, window_secs: u64, burst: Option<u64>, soft_ratio: f64) -> Self {
        #[allow(clippy::cast_precision_loss)]
        Policy {
            capacity: burst.unwrap_or(max_per_window) as f64,
            refill_per_ms: max_per_window as f64 / (window_secs.max(1) as f64 * 1000.0),
            soft_ratio,
            window_secs,
        }
    }
}

/// Persisted bucket state.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct State {
    /// Tokens available at `updated_at`.
    pub tokens: f64,
    /// When `tokens` was computed (ms).
    pub updated_at: u64,
}

impl State {
    /// A full bucket at `now`.
    #[must_use]
    pub fn full(policy: &Policy, now: u64) -> Self {
        State {
            tokens: policy.capacity,
            updated_at: now,
        }
    }

    /// The state refilled up to `now`. A stored time later than `now` means
    /// the wall clock was stepped back since: it counts as `now`, so the
    /// step adds nothing and the bucket refills from `now` on (keeping the
    /// later time would freeze it until the clock caught up).
    #[must_use]
    pub fn refilled(&self, policy: &Policy, now: u64) -> Self {
        #[allow(clippy::cast_precision_loss)]
        let elapsed = (now - self.updated_at.min(now)) as f64;
        State {
            tokens: (self.tokens + elapsed * policy.refill_per_ms).min(policy.capacity),
            updated_at: now,
        }
    }
}

/// The outcome of asking for one token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decision {
    /// Admitted below the soft threshold.
    Admit,
    /// Admitted, but `used` of `capacity` tokens are now in use, at or past
    /// the soft threshold.
    Soft { used: u64, capacity: u64 },
    /// Refused: the bucket is empty; a token arrives in `retry_after_ms`.
    Hard { capacity: u64, retry_after_ms: u64 },
}

/// Takes one token at `now` if there is one. Returns the new state (to
/// persist) and the decision.
#[must_use]
pub fn take(state: &State, policy: &Policy, now: u64) -> (State, Decision) {
    let mut s = state.refilled(policy, now);
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let capacity = policy.capacity.round() as u64;
    // A hair of tolerance so float refill never refuses a token that is due.
    if s.tokens < 1.0 - 1e-9 {
        let missing = 1.0 - s.tokens;
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let retry_after_ms = if policy.refill_per_ms > 0.0 {
            (missing / policy.refill_per_ms - 1e-6).ceil().max(1.0) as u64
        } else {
            u64::MAX
        };
        return (
            s,
            Decision::Hard {
                capacity,
                retry_after_ms,
            },
        );
    }
    s.tokens = (s.tokens - 1.0).max(0.0);
    let used = policy.capacity - s.tokens;
    if used + 1e-9 >= policy.soft_ratio * policy.capacity {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let used = used.round() as u64;
        (s, Decision::Soft { used, capacity })
    } else {
        (s, Decision::Admit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(max: u64, secs: u64) -> Policy {
        Policy::new(max, secs, None, 0.8)
    }

    #[test]
    fn burst_soft_then_hard_with_exact_counts() {
        let p = policy(20, 60);
        let mut s = State::full(&p, 0);
        let mut decisions = Vec::new();
        for _ in 0..21 {
            let (n, d) = take(&s, &p, 0);
            s = n;
            decisions.push(d);
        }
        assert!(decisions[..15].iter().all(|d| *d == Decision::Admit));
        assert_eq!(
            decisions[15],
            Decision::Soft {
                used: 16,
                capacity: 20
            }
        );
        assert_eq!(
            decisions[19],
            Decision::Soft {
                used: 20,
                capacity: 20
            }
        );
        assert_eq!(
            decisions[20],
            Decision::Hard {
                capacity: 20,
                retry_after_ms: 3000
            }
        );
    }

    #[test]
    fn refills_with_time() {
        let p = policy(20, 60); // one token per 3 s
        let mut s = State::full(&p, 0);
        for _ in 0..20 {
            s = take(&s, &p, 0).0;
        }
        assert!(matches!(
            take(&s, &p, 2999).1,
            Decision::Hard {
                retry_after_ms: 1,
                ..
            }
        ));
        let (s2, d) = take(&s, &p, 3000);
        assert_ne!(d, Decision::Admit); // admitted, still at the soft level
        assert!(!matches!(d, Decision::Hard { .. }));
        assert!(matches!(take(&s2, &p, 3000).1, Decision::Hard { .. }));
        // A full window refills completely, never past capacity.
        let full = s.refilled(&p, 10 * 60_000);
        assert!((full.tokens - 20.0).abs() < 1e-9);
    }

    #[test]
    fn clock_going_back_adds_nothing_and_refills_from_then_on() {
        let p = policy(10, 10); // one token per second
        let s = State {
            tokens: 0.0,
            updated_at: 5000,
        };
        let r = s.refilled(&p, 1000);
        assert!(r.tokens.abs() < 1e-12);
        assert_eq!(r.updated_at, 1000);
        // The next token is due one refill period after the step, not at
        // the time written before it.
        assert_eq!(
            take(&s, &p, 1000).1,
            Decision::Hard {
                capacity: 10,
                retry_after_ms: 1000
            }
        );
        let (_, d) = take(&take(&s, &p, 1000).0, &p, 2000);
        assert!(!matches!(d, Decision::Hard { .. }), "{d:?}");
    }

    /// Property: whatever the clock does (steps back included), a refusal's
    /// retry-after is never longer than one token's refill time, and a send
    /// made that long after a refusal, with the clock running forward, is
    /// admitted.
    #[test]
    fn retry_after_is_the_truth_across_clock_steps() {
        let mut rand = crate::testing::xorshift(0x2545_F491_4F6C_DD1D_u64);
        for case in 0..200 {
            let p = policy(1 + rand() % 50, 1 + rand() % 3600);
            let refill_ms = (1.0 / p.refill_per_ms).ceil();
            let mut s = State::full(&p, 1_000_000_000_000);
            let mut now = 1_000_000_000_000u64;
            for _ in 0..300 {
                now = match rand() % 10 {
                    // A step back of up to a day.
                    0 => now - rand() % 86_400_000,
                    _ => now + rand() % 5000,
                };
                let (n, d) = take(&s, &p, now);
                s = n;
                if let Decision::Hard { retry_after_ms, .. } = d {
                    #[allow(clippy::cast_precision_loss)]
                    let shown = retry_after_ms as f64;
                    assert!(shown <= refill_ms, "case {case}: retry in {retry_after_ms}");
                    let (n, d) = take(&s, &p, now + retry_after_ms);
                    assert!(!matches!(d, Decision::Hard { .. }), "case {case}: {d:?}");
                    s = n;
                    now += retry_after_ms;
                }
            }
        }
    }

    #[test]
    fn burst_overrides_capacity() {
        let p = Policy::new(10, 60, Some(3), 0.8);
        let mut s = State::full(&p, 0);
        let mut admitted = 0;
        for _ in 0..10 {
            let (n, d) = take(&s, &p, 0);
            s = n;
            if !matches!(d, Decision::Hard { .. }) {
                admitted += 1;
            }
        }
        assert_eq!(admitted, 3);
    }

    /// Property: over any sequence of requests at random times, the number
    /// admitted in [0, t] never exceeds capacity + refill * t.
    #[test]
    fn never_admits_more_than_capacity_plus_refill() {
        let mut rand = crate::testing::xorshift(0x9E37_79B9_7F4A_7C15_u64);
        for case in 0..200 {
            let max = 1 + rand() % 50;
            let secs = 1 + rand() % 120;
            let p = policy(max, secs);
            let mut s = State::full(&p, 0);
            let (mut now, mut admitted) = (0u64, 0u64);
            for _ in 0..500 {
                now += rand() % 2000;
                let (n, d) = take(&s, &p, now);
                s = n;
                if !matches!(d, Decision::Hard { .. }) {
                    admitted += 1;
                }
                #[allow(clippy::cast_precision_loss)]
                let bound = p.capacity + p.refill_per_ms * now as f64;
                #[allow(clippy::cast_precision_loss)]
                let got = admitted as f64;
                assert!(got <= bound + 1e-6, "case {case}: {admitted} > {bound}");
            }
        }
    }
}
