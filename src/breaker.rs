//! The per-(sender, endpoint) circuit breaker: a pure state machine of
//! (state, event, policy, now) -> (state, decision).
//!
//! closed --N consecutive failures--> open --cooldown--> half-open
//! half-open --`success_to_close` probe successes--> closed
//! half-open --probe failure (or probes unresolved for a cooldown)--> open

/// Breaker knobs (from `reliability.circuitBreaker`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    /// Consecutive failures that open a closed breaker.
    pub failure_threshold: u32,
    /// Cooldown after the first trip (ms).
    pub cooldown_ms: u64,
    /// Probes admitted at once while half-open.
    pub half_open_probes: u32,
    /// Probe successes that close a half-open breaker.
    pub success_to_close: u32,
    /// Cooldown growth per repeated trip (1.0 = constant).
    pub backoff: f64,
    /// Upper bound of the grown cooldown (ms).
    pub max_cooldown_ms: u64,
}

impl Policy {
    /// Cooldown for the `trips`-th consecutive trip (1-based).
    #[must_use]
    pub fn cooldown(&self, trips: u32) -> u64 {
        let exp = i32::try_from(trips.saturating_sub(1).min(64)).unwrap_or(64);
        #[allow(clippy::cast_precision_loss)]
        let grown = self.cooldown_ms as f64 * self.backoff.powi(exp);
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let grown = if grown.is_finite() {
            grown as u64
        } else {
            u64::MAX
        };
        grown.clamp(self.cooldown_ms, self.max_cooldown_ms.max(self.cooldown_ms))
    }
}

/// Where the breaker is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Deliveries flow; `failures` consecutive failures so far.
    Closed,
    /// Deliveries refused until `next_probe_at`.
    Open,
    /// Up to `half_open_probes` probe deliveries at a time.
    HalfOpen,
}

impl Phase {
    /// Stored and displayed name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Closed => "closed",
            Phase::Open => "open",
            Phase::HalfOpen => "half-open",
        }
    }

    /// Parses a stored name (unknown names read as closed).
    #[must_use]
    pub fn parse(s: &str) -> Self {
        match s {
            "open" => Phase::Open,
            "half-open" => Phase::HalfOpen,
            _ => Phase::Closed,
        }
    }
}

/// Persisted breaker state for one pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct State {
    /// Current phase.
    pub phase: Phase,
    /// Consecutive failures (closed) or probe failures seen.
    pub failures: u32,
    /// Probe successes so far (half-open).
    pub successes: u32,
    /// Probes admitted and not yet resolved (half-open).
    pub probes_in_flight: u32,
    /// When it last opened (ms, 0 = never).
    pub opened_at: u64,
    /// When an open breaker half-opens, or when unresolved probes time out.
    pub next_probe_at: u64,
    /// Consecutive trips without closing (drives the growing cooldown).
    pub trips: u32,
    /// Total trips ever.
    pub total_trips: u32,
}

impl Default for State {
    fn default() -> Self {
        State {
            phase: Phase::Closed,
            failures: 0,
            successes: 0,
            probes_in_flight: 0,
            opened_at: 0,
            next_probe_at: 0,
            trips: 0,
            total_trips: 0,
        }
    }
}

/// What happened on the pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A sender wants to deliver.
    Send,
    /// A delivered message was acked; `probe` if it was sent as a probe.
    Success { probe: bool },
    /// A delivery failed (nack, lease expiry, I/O error).
    Failure { probe: bool },
    /// Operator reset: closed, counters cleared.
    Reset,
    /// Operator maintenance: open until `until`.
    ForceOpen { until: u64 },
    /// Someone looked (`breakers`, `status`): apply what time alone changes.
    Observe,
}

/// The breaker's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Deliver normally.
    Admit,
    /// Deliver as a half-open probe (its outcome decides the breaker).
    Probe,
    /// Refuse; retry after this many ms.
    Reject { retry_after_ms: u64 },
    /// Not a send: nothing to admit.
    Noted,
}

/// A phase change worth an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// closed/half-open -> open.
    Opened,
    /// open -> half-open.
    HalfOpened,
    /// half-open (or open, by reset) -> closed.
    Closed,
}

/// Applies `event` at `now`. Returns the new state, the decision and the
/// phase transitions it caused (in order).
#[must_use]
pub fn step(s: &State, event: Event, p: &Policy, now: u64) -> (State, Decision, Vec<Transition>) {
    let mut s = rebased(s, p, now);
    let mut transitions = Vec::new();
    // Time-driven moves first: an open breaker past its cooldown half-opens;
    // half-open probes unresolved for a whole cooldown count as failed.
    if s.phase == Phase::Open && now >= s.next_probe_at {
        s.phase = Phase::HalfOpen;
        s.successes = 0;
        s.probes_in_flight = 0;
        s.next_probe_at = now.saturating_add(p.cooldown(s.trips.max(1)));
        transitions.push(Transition::HalfOpened);
    } else if s.phase == Phase::HalfOpen
        && s.probes_in_flight >= p.half_open_probes
        && now >= s.next_probe_at
    {
        open(&mut s, p, now, &mut transitions);
        return finish(s, event, p, now, transitions);
    }
    finish(s, event, p, now, transitions)
}

fn finish(
    mut s: State,
    event: Event,
    p: &Policy,
    now: u64,
    mut transitions: Vec<Transition>,
) -> (State, Decision, Vec<Transition>) {
    let decision = match (s.phase, event) {
        (_, Event::Observe) => Decision::Noted,
        (_, Event::Reset) => {
            if s.phase != Phase::Closed {
                transitions.push(Transition::Closed);
            }
            let total = s.total_trips;
            s = State {
                total_trips: total,
                ..State::default()
            };
            Decision::Noted
        }
        (_, Event::ForceOpen { until }) => {
            if s.phase != Phase::Open {
                transitions.push(Transition::Opened);
            }
            s.phase = Phase::Open;
            s.opened_at = now;
            s.next_probe_at = until;
            s.probes_in_flight = 0;
            s.successes = 0;
            Decision::Noted
        }
        (Phase::Closed, Event::Send) => Decision::Admit,
        (Phase::Closed, Event::Success { .. }) => {
            s.failures = 0;
            Decision::Noted
        }
        (Phase::Closed, Event::Failure { .. }) => {
            s.failures = s.failures.saturating_add(1);
            if s.failures >= p.failure_threshold {
                open(&mut s, p, now, &mut transitions);
            }
            Decision::Noted
        }
        (Phase::Open, Event::Send) => Decision::Reject {
            retry_after_ms: s.next_probe_at.saturating_sub(now).max(1),
        },
        // Outcomes of messages sent before the trip do not move an open breaker.
        (Phase::Open, _) => Decision::Noted,
        (Phase::HalfOpen, Event::Send) => {
            if s.probes_in_flight < p.half_open_probes {
                s.probes_in_flight += 1;
                Decision::Probe
            } else {
                Decision::Reject {
                    retry_after_ms: s.next_probe_at.saturating_sub(now).max(1),
                }
            }
        }
        (Phase::HalfOpen, Event::Success { probe: true }) => {
            s.probes_in_flight = s.probes_in_flight.saturating_sub(1);
            s.successes += 1;
            if s.successes >= p.success_to_close {
                s = State {
                    total_trips: s.total_trips,
                    ..State::default()
                };
                transitions.push(Transition::Closed);
            }
            Decision::Noted
        }
        (Phase::HalfOpen, Event::Failure { probe: true }) => {
            s.failures = s.failures.saturating_add(1);
            open(&mut s, p, now, &mut transitions);
            Decision::Noted
        }
        // Late outcomes of pre-trip messages do not decide a half-open breaker.
        (Phase::HalfOpen, _) => Decision::Noted,
    };
    (s, decision, transitions)
}

fn open(s: &mut State, p: &Policy, now: u64, transitions: &mut Vec<Transition>) {
    s.trips = s.trips.saturating_add(1);
    s.total_trips = s.total_trips.saturating_add(1);
    s.phase = Phase::Open;
    s.opened_at = now;
    s.next_probe_at = now.saturating_add(p.cooldown(s.trips));
    s.probes_in_flight = 0;
    s.successes = 0;
    transitions.push(Transition::Opened);
}

/// `s` with its times brought back to `now` if the wall clock was stepped
/// back since they were written (a time later than `now`): a cooldown or a
/// probe timeout then runs its configured length from `now` at most,
/// instead of that length plus the step (a 30 s cooldown shown as "next
/// probe in 59m" after a step back of an hour).
#[must_use]
pub fn rebased(s: &State, p: &Policy, now: u64) -> State {
    let mut s = *s;
    if s.opened_at > now {
        // Open: the cooldown (or the operator's `open --for`) it was set
        // for, measured from now.
        let length = s.next_probe_at.saturating_sub(s.opened_at);
        s.opened_at = now;
        if s.phase == Phase::Open {
            s.next_probe_at = now.saturating_add(length);
        }
    }
    if s.phase == Phase::HalfOpen {
        // Unresolved probes time out one cooldown after half-opening.
        s.next_probe_at = s
            .next_probe_at
            .min(now.saturating_add(p.cooldown(s.trips.max(1))));
    }
    s
}

/// The phase an observer at `now` should be shown (an open breaker whose
/// cooldown has passed is effectively half-open).
#[must_use]
pub fn effective_phase(s: &State, now: u64) -> Phase {
    if s.phase == Phase::Open && now >= s.next_probe_at {
        Phase::HalfOpen
    } else {
        s.phase
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Policy = Policy {
        failure_threshold: 5,
        cooldown_ms: 30_000,
        half_open_probes: 1,
        success_to_close: 2,
        backoff: 1.0,
        max_cooldown_ms: 30_000,
    };

    fn run(s: State, events: &[(Event, u64)]) -> (State, Vec<Decision>, Vec<Transition>) {
        let (mut s, mut ds, mut ts) = (s, Vec::new(), Vec::new());
        for (e, now) in events {
            let (n, d, t) = step(&s, *e, &P, *now);
            s = n;
            ds.push(d);
            ts.extend(t);
        }
        (s, ds, ts)
    }

    fn fail() -> Event {
        Event::Failure { probe: false }
    }

    #[test]
    fn trips_after_threshold_and_rejects_while_open() {
        let (s, _, t) = run(State::default(), &[(fail(), 0); 4]);
        assert_eq!(s.phase, Phase::Closed);
        assert!(t.is_empty());
        let (s, _, t) = run(s, &[(fail(), 1000)]);
        assert_eq!(s.phase, Phase::Open);
        assert_eq!(t, vec![Transition::Opened]);
        let (_, d, _) = step(&s, Event::Send, &P, 2000);
        assert_eq!(
            d,
            Decision::Reject {
                retry_after_ms: 29_000
            }
        );
    }

    #[test]
    fn success_resets_consecutive_failures() {
        let (s, _, _) = run(
            State::default(),
            &[
                (fail(), 0),
                (fail(), 0),
                (Event::Success { probe: false }, 0),
                (fail(), 0),
            ],
        );
        assert_eq!(s.failures, 1);
    }

    #[test]
    fn half_open_admits_exact_probes_then_closes() {
        let (s, _, _) = run(State::default(), &[(fail(), 0); 5]);
        let (s, d, t) = run(s, &[(Event::Send, 30_000), (Event::Send, 30_001)]);
        assert_eq!(
            d,
            vec![
                Decision::Probe,
                Decision::Reject {
                    retry_after_ms: 29_999
                }
            ]
        );
        assert_eq!(t, vec![Transition::HalfOpened]);
        let (s, _, t) = run(s, &[(Event::Success { probe: true }, 30_010)]);
        assert_eq!(s.phase, Phase::HalfOpen);
        assert!(t.is_empty());
        let (s, d, _) = run(s, &[(Event::Send, 30_020)]);
        assert_eq!(d, vec![Decision::Probe]);
        let (s, _, t) = run(s, &[(Event::Success { probe: true }, 30_030)]);
        assert_eq!(s.phase, Phase::Closed);
        assert_eq!(t, vec![Transition::Closed]);
        assert_eq!(s.total_trips, 1);
    }

    #[test]
    fn probe_failure_reopens_and_backoff_grows() {
        let p = Policy {
            backoff: 2.0,
            max_cooldown_ms: 100_000,
            ..P
        };
        let mut s = State::default();
        for _ in 0..5 {
            s = step(&s, fail(), &p, 0).0;
        }
        assert_eq!(s.next_probe_at, 30_000);
        let (s, d, _) = step(&s, Event::Send, &p, 30_000);
        assert_eq!(d, Decision::Probe);
        let (s, _, t) = step(&s, Event::Failure { probe: true }, &p, 31_000);
        assert_eq!(t, vec![Transition::Opened]);
        assert_eq!(s.next_probe_at, 31_000 + 60_000);
        assert_eq!(p.cooldown(5), 100_000);
    }

    #[test]
    fn unresolved_probes_time_out_as_failure() {
        let (s, _, _) = run(State::default(), &[(fail(), 0); 5]);
        let (s, _, _) = run(s, &[(Event::Send, 30_000)]);
        let (s, d, t) = step(&s, Event::Send, &P, 60_000);
        assert_eq!(t, vec![Transition::Opened]);
        assert!(matches!(d, Decision::Reject { .. }));
        assert_eq!(s.phase, Phase::Open);
    }

    #[test]
    fn late_outcomes_do_not_move_open_or_half_open() {
        let (s, _, _) = run(State::default(), &[(fail(), 0); 5]);
        let (s2, _, t) = run(s, &[(Event::Success { probe: false }, 10), (fail(), 20)]);
        assert_eq!(s2, s);
        assert!(t.is_empty());
    }

    #[test]
    fn reset_and_force_open() {
        let (s, _, _) = run(State::default(), &[(fail(), 0); 5]);
        let (s, _, t) = step(&s, Event::Reset, &P, 5);
        assert_eq!((s.phase, s.failures, s.total_trips), (Phase::Closed, 0, 1));
        assert_eq!(t, vec![Transition::Closed]);
        let (s, _, t) = step(&s, Event::ForceOpen { until: 500 }, &P, 10);
        assert_eq!(t, vec![Transition::Opened]);
        assert_eq!(
            step(&s, Event::Send, &P, 20).1,
            Decision::Reject {
                retry_after_ms: 480
            }
        );
    }

    const HOUR: u64 = 3_600_000;
    const T: u64 = 1_767_225_600_000;

    #[test]
    fn a_clock_step_back_leaves_the_cooldown_its_length() {
        let (s, _, _) = run(State::default(), &[(fail(), T); 5]);
        // Stepped back an hour, 10 s after the trip: "next probe in 30s",
        // not "in 1h".
        let back = T - HOUR + 10_000;
        let (s2, d, _) = step(&s, Event::Send, &P, back);
        assert_eq!(
            d,
            Decision::Reject {
                retry_after_ms: 30_000
            }
        );
        assert_eq!((s2.opened_at, s2.next_probe_at), (back, back + 30_000));
        // The cooldown ends 30 s later, on the clock as it now runs.
        assert_eq!(
            step(&s2, Event::Send, &P, back + 29_999).1,
            Decision::Reject { retry_after_ms: 1 }
        );
        assert_eq!(step(&s2, Event::Send, &P, back + 30_000).1, Decision::Probe);
        // Unchanged without a step.
        assert_eq!(rebased(&s, &P, T + 5), s);
    }

    #[test]
    fn a_clock_step_back_keeps_a_forced_opening_its_length() {
        let (s, _, _) = step(
            &State::default(),
            Event::ForceOpen { until: T + 600_000 },
            &P,
            T,
        );
        let (_, d, _) = step(&s, Event::Send, &P, T - HOUR);
        assert_eq!(
            d,
            Decision::Reject {
                retry_after_ms: 600_000
            }
        );
    }

    #[test]
    fn a_clock_step_back_leaves_unresolved_probes_one_cooldown() {
        let (s, _, _) = run(State::default(), &[(fail(), T); 5]);
        let (s, d, _) = run(s, &[(Event::Send, T + 30_000)]);
        assert_eq!(d, vec![Decision::Probe]);
        let back = T - HOUR;
        let (s2, d, t) = step(&s, Event::Send, &P, back);
        assert!(t.is_empty());
        assert_eq!(
            d,
            Decision::Reject {
                retry_after_ms: 30_000
            }
        );
        // The probe times out (a failure: open again) a cooldown later.
        let (s3, _, t) = step(&s2, Event::Send, &P, back + 30_000);
        assert_eq!(t, vec![Transition::Opened]);
        assert_eq!(s3.next_probe_at, back + 60_000);
    }

    /// Property: with the clock stepping back at random, a refusal never
    /// asks to wait longer than a cooldown, and once an open breaker's
    /// retry-after has passed (the clock running forward) a probe is let
    /// through.
    #[test]
    fn retry_after_never_exceeds_the_cooldown_across_clock_steps() {
        let mut rand = crate::testing::xorshift(0x0123_4567_89AB_CDEF_u64);
        for case in 0..300 {
            let (mut s, mut now) = (State::default(), T);
            for _ in 0..300 {
                now = match rand() % 8 {
                    0 => now - rand() % (24 * HOUR),
                    _ => now + rand() % 20_000,
                };
                let event = match rand() % 3 {
                    0 => Event::Send,
                    1 => Event::Success {
                        probe: rand().is_multiple_of(2),
                    },
                    _ => fail(),
                };
                let (n, d, _) = step(&s, event, &P, now);
                s = n;
                if let Decision::Reject { retry_after_ms } = d {
                    assert!(retry_after_ms <= P.cooldown_ms, "case {case}: {d:?}");
                    if s.phase == Phase::Open {
                        let later = now + retry_after_ms;
                        let (n, d, _) = step(&s, Event::Send, &P, later);
                        assert_eq!(d, Decision::Probe, "case {case}");
                        (s, now) = (n, later);
                    }
                }
            }
        }
    }

    /// Property: whatever the sequence, a half-open breaker never has more
    /// probes in flight than configured, and sends are refused exactly while open.
    #[test]
    fn probes_never_exceed_policy() {
        let mut rand = crate::testing::xorshift(0xDEAD_BEEF_u64);
        for _ in 0..300 {
            let p = Policy {
                half_open_probes: 1 + u32::try_from(rand() % 3).unwrap_or(0),
                success_to_close: 1 + u32::try_from(rand() % 3).unwrap_or(0),
                failure_threshold: 1 + u32::try_from(rand() % 4).unwrap_or(0),
                ..P
            };
            let (mut s, mut now) = (State::default(), 0u64);
            for _ in 0..300 {
                now += rand() % 20_000;
                let event = match rand() % 4 {
                    0 | 1 => Event::Send,
                    2 => Event::Success {
                        probe: rand().is_multiple_of(2),
                    },
                    _ => Event::Failure {
                        probe: rand().is_multiple_of(2),
                    },
                };
                let before = effective_phase(&s, now);
                let (n, d, _) = step(&s, event, &p, now);
                assert!(n.probes_in_flight <= p.half_open_probes);
                if event == Event::Send && before == Phase::Closed {
                    assert_eq!(d, Decision::Admit);
                }
                if matches!(d, Decision::Probe) {
                    assert_eq!(n.phase, Phase::HalfOpen);
                }
                s = n;
            }
        }
    }
}
