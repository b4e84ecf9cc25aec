//! Mailbox backpressure with priority lanes: a pure function of (depth,
//! priority, policy). Depth is counted from the Maildir by the caller, under
//! the endpoint's lock so the check and the delivery are one step.

use std::fmt;

/// Message priority, highest first. `normal` behaves exactly as DorkOS's
/// backpressure; lower lanes are shed earlier, higher ones may use headroom.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, clap::ValueEnum)]
pub enum Priority {
    /// Must get through: may fill the whole headroom above capacity.
    Critical,
    /// Urgent: may fill half the headroom above capacity.
    High,
    /// The default lane.
    #[default]
    Normal,
    /// Shed when the mailbox reaches `shedLowAt` of capacity.
    Low,
    /// Shed first, at `shedBackgroundAt` of capacity.
    Background,
}

impl Priority {
    /// The wire name (`critical` ... `background`).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Critical => "critical",
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
            Priority::Background => "background",
        }
    }

    /// Parses a wire name; unknown or missing names are normal.
    #[must_use]
    pub fn parse(s: Option<&str>) -> Self {
        match s {
            Some("critical") => Priority::Critical,
            Some("high") => Priority::High,
            Some("low") => Priority::Low,
            Some("background") => Priority::Background,
            _ => Priority::Normal,
        }
    }

    /// Sort rank: 0 for critical (handed out first) to 4 for background.
    #[must_use]
    pub fn rank(self) -> u8 {
        self as u8
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Backpressure knobs (from `reliability.backpressure`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    /// Capacity for normal messages (new/ + cur/).
    pub max_mailbox_size: u64,
    /// Fraction of capacity at which senders are warned.
    pub warning_at: f64,
    /// Fraction of capacity at which low-priority sends are refused.
    pub shed_low_at: f64,
    /// Fraction of capacity at which background sends are refused.
    pub shed_background_at: f64,
    /// Extra room above capacity, as a fraction of it, for high (half) and
    /// critical (all) messages.
    pub priority_headroom: f64,
}

impl Policy {
    /// The depth at which a send of `priority` is refused.
    #[must_use]
    pub fn limit(&self, priority: Priority) -> u64 {
        let max = self.max_mailbox_size;
        let frac = |r: f64| -> u64 {
            #[allow(
                clippy::cast_precision_loss,
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss
            )]
            let v = (max as f64 * r).ceil() as u64;
            v
        };
        #[allow(
            clippy::cast_precision_loss,
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss
        )]
        let headroom = (max as f64 * self.priority_headroom).floor() as u64;
        match priority {
            Priority::Critical => max + headroom,
            Priority::High => max + headroom / 2,
            Priority::Normal => max,
            Priority::Low => frac(self.shed_low_at).clamp(1, max),
            Priority::Background => frac(self.shed_background_at).clamp(1, max),
        }
    }

    /// The depth at which senders start being warned.
    /// Depths below this get `Accept` for every priority: nothing needs
    /// an exact count there.
    #[must_use]
    pub fn quiet_below(&self) -> u64 {
        self.warning_depth()
            .min(self.limit(Priority::Low))
            .min(self.limit(Priority::Background))
    }

    #[must_use]
    pub fn warning_depth(&self) -> u64 {
        #[allow(
            clippy::cast_precision_loss,
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss
        )]
        let v = (self.max_mailbox_size as f64 * self.warning_at).ceil() as u64;
        v
    }
}

/// The outcome for one send to one endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Accept quietly.
    Accept,
    /// Accept, but the mailbox is at or past the warning level.
    Warn {
        /// Depth before this message.
        depth: u64,
        /// Depth at which this priority is refused.
        limit: u64,
    },
    /// Refuse: the mailbox is full for this priority.
    Reject {
        /// Depth before this message.
        depth: u64,
        /// Depth at which this priority is refused.
        limit: u64,
    },
}

/// Decides whether one more message of `priority` fits a mailbox holding
/// `depth` messages. Accepting never makes depth exceed `limit(priority)`.
#[must_use]
pub fn decide(depth: u64, priority: Priority, p: &Policy) -> Decision {
    let limit = p.limit(priority);
    if depth >= limit {
        Decision::Reject { depth, limit }
    } else if depth >= p.warning_depth() {
        Decision::Warn { depth, limit }
    } else {
        Decision::Accept
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Policy = Policy {
        max_mailbox_size: 100,
        warning_at: 0.8,
        shed_low_at: 0.9,
        shed_background_at: 0.75,
        priority_headroom: 0.1,
    };

    #[test]
    fn below_quiet_every_priority_is_accepted() {
        let q = P.quiet_below();
        assert_eq!(q, 75);
        for pr in [
            Priority::Critical,
            Priority::High,
            Priority::Normal,
            Priority::Low,
            Priority::Background,
        ] {
            assert_eq!(decide(q - 1, pr, &P), Decision::Accept, "{pr}");
        }
        assert_ne!(decide(q, Priority::Background, &P), Decision::Accept);
    }

    #[test]
    fn normal_warns_then_rejects_at_capacity() {
        assert_eq!(decide(79, Priority::Normal, &P), Decision::Accept);
        assert_eq!(
            decide(80, Priority::Normal, &P),
            Decision::Warn {
                depth: 80,
                limit: 100
            }
        );
        assert_eq!(
            decide(99, Priority::Normal, &P),
            Decision::Warn {
                depth: 99,
                limit: 100
            }
        );
        assert_eq!(
            decide(100, Priority::Normal, &P),
            Decision::Reject {
                depth: 100,
                limit: 100
            }
        );
    }

    #[test]
    fn shedding_order_follows_priority() {
        let limits: Vec<u64> = [
            Priority::Background,
            Priority::Low,
            Priority::Normal,
            Priority::High,
            Priority::Critical,
        ]
        .iter()
        .map(|p| P.limit(*p))
        .collect();
        assert_eq!(limits, vec![75, 90, 100, 105, 110]);
        assert!(matches!(
            decide(75, Priority::Background, &P),
            Decision::Reject { .. }
        ));
        assert!(matches!(
            decide(100, Priority::High, &P),
            Decision::Warn { .. }
        ));
        assert!(matches!(
            decide(105, Priority::High, &P),
            Decision::Reject { .. }
        ));
        assert!(matches!(
            decide(109, Priority::Critical, &P),
            Decision::Warn { .. }
        ));
        assert!(matches!(
            decide(110, Priority::Critical, &P),
            Decision::Reject { .. }
        ));
    }

    #[test]
    fn tiny_mailbox_still_takes_one_low_message() {
        let p = Policy {
            max_mailbox_size: 1,
            ..P
        };
        assert_eq!(p.limit(Priority::Background), 1);
        assert!(matches!(
            decide(0, Priority::Background, &p),
            Decision::Warn { .. } | Decision::Accept
        ));
        assert!(matches!(
            decide(1, Priority::Normal, &p),
            Decision::Reject { .. }
        ));
    }

    #[test]
    fn priority_names_round_trip() {
        for p in [
            Priority::Critical,
            Priority::High,
            Priority::Normal,
            Priority::Low,
            Priority::Background,
        ] {
            assert_eq!(Priority::parse(Some(p.as_str())), p);
        }
        assert_eq!(Priority::parse(None), Priority::Normal);
        assert!(Priority::Critical.rank() < Priority::Background.rank());
    }
}
