//! relay's vocabularies, each word written once: index row statuses, event
//! kinds, dead-letter and refusal codes, and DorkOS's words for them.
//!
//! Every enum has one string form (`as_str`, and `FromStr`, `Display` and
//! serde through it), which is what the index's columns hold, what JSON
//! output prints and, for DorkOS's vocabularies, what DorkOS writes
//! (dorkos-http.md section 5.8). Words read back from disk may come from
//! another writer or an older relay; `FromStr` refuses what it does not know
//! and the caller decides what that means.

use std::fmt;
use std::str::FromStr;

/// A word that is not in a vocabulary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unknown {
    /// The vocabulary's name, e.g. `event kind`.
    pub vocabulary: &'static str,
    /// The word as given.
    pub word: String,
}

impl fmt::Display for Unknown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown {} '{}'", self.vocabulary, self.word)
    }
}

impl std::error::Error for Unknown {}

/// Declares a vocabulary: `vocabulary! { "name", Enum { Variant = "word", ... } }`.
macro_rules! vocabulary {
    (
        $(#[$meta:meta])*
        $what:literal, $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $word:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every word, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The one string form.
            #[must_use]
            pub const fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $word, )+
                }
            }
        }

        impl FromStr for $name {
            type Err = Unknown;
            fn from_str(word: &str) -> Result<Self, Unknown> {
                match word {
                    $( $word => Ok($name::$variant), )+
                    _ => Err(Unknown {
                        vocabulary: $what,
                        word: word.to_string(),
                    }),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let word = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                word.parse().map_err(serde::de::Error::custom)
            }
        }

        impl rusqlite::ToSql for $name {
            fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
                Ok(self.as_str().into())
            }
        }

        impl rusqlite::types::FromSql for $name {
            fn column_result(
                v: rusqlite::types::ValueRef<'_>,
            ) -> rusqlite::types::FromSqlResult<Self> {
                v.as_str()?
                    .parse()
                    .map_err(|e: Unknown| rusqlite::types::FromSqlError::Other(Box::new(e)))
            }
        }
    };
}

vocabulary! {
    /// The status of a message row in the index (`messages.status`).
    "status", Status {
        /// In `new/`.
        Pending = "pending",
        /// In `cur/`.
        Claimed = "claimed",
        /// Acknowledged and removed.
        Acked = "acked",
        /// Dead-lettered in `failed/`.
        Failed = "failed",
    }
}

impl Status {
    /// DorkOS's index status for a row of this status.
    #[must_use]
    pub const fn dorkos(self) -> DorkStatus {
        match self {
            Status::Pending | Status::Claimed => DorkStatus::Pending,
            Status::Acked => DorkStatus::Delivered,
            Status::Failed => DorkStatus::Failed,
        }
    }

    /// Whether the message is done with: acked or dead-lettered.
    #[must_use]
    pub const fn is_settled(self) -> bool {
        matches!(self, Status::Acked | Status::Failed)
    }
}

vocabulary! {
    /// DorkOS's index status (`relay_index.status`, IndexedMessage.status).
    "DorkOS status", DorkStatus {
        /// In `new/` or `cur/`.
        Pending = "pending",
        /// Acked (or the `*` accounting row).
        Delivered = "delivered",
        /// Dead-lettered.
        Failed = "failed",
    }
}

vocabulary! {
    /// DorkOS's trace status (`relay_traces.status`).
    "trace status", TraceStatus {
        Sent = "sent",
        Delivered = "delivered",
        Failed = "failed",
        Timeout = "timeout",
        NoSubscriber = "no_subscriber",
    }
}

vocabulary! {
    /// What an event row records (`events.kind`, `relay events --kind`).
    "event kind", EventKind {
        /// A send took a sender's bucket past `softLimitRatio`.
        RateLimitSoft = "rate_limit_soft",
        /// A send found the sender's bucket empty.
        RateLimitHard = "rate_limit_hard",
        BreakerOpened = "breaker_opened",
        BreakerHalfOpen = "breaker_half_open",
        BreakerClosed = "breaker_closed",
        BackpressureWarning = "backpressure_warning",
        BackpressureRejected = "backpressure_rejected",
        /// A claim's lease ran out.
        LeaseExpired = "lease_expired",
        /// A message whose lease ran out went back to `new/`.
        Redelivered = "redelivered",
        DeadLetter = "dead_letter",
        FailureNotice = "failure_notice",
        FailureNoticeRefused = "failure_notice_refused",
        /// A dead letter sent again (`dlq requeue`, a consumer's give-back).
        Requeued = "requeued",
        DlqPurged = "dlq_purged",
        Expired = "expired",
        /// A durable batch's message put back from its log.
        Restored = "restored",
        RemoteSpan = "remote_span",
        BridgeForwarded = "bridge_forwarded",
        BridgeDuplicate = "bridge_duplicate",
        BridgeConnected = "bridge_connected",
        BridgeDisconnected = "bridge_disconnected",
        BridgeReconnected = "bridge_reconnected",
        BridgeStopped = "bridge_stopped",
    }
}

vocabulary! {
    /// Why a message was dead-lettered or a copy refused: the `code` of a
    /// dead letter's `.reason.json`, of `messages.code`, of a
    /// `dead_letter` event and of a refusal in JSON output.
    "code", Code {
        /// `relay nack`, or a handler that failed.
        Nack = "nack",
        /// Budget: out of hops.
        HopLimit = "hop_limit",
        /// Budget: the subject is already in its ancestor chain.
        CycleDetected = "cycle_detected",
        /// Budget: its TTL passed (at send, or unread).
        TtlExpired = "ttl_expired",
        /// Budget: out of call budget.
        BudgetExhausted = "budget_exhausted",
        /// The access rules refused it.
        AccessDenied = "access_denied",
        /// Its claims ran out of their lease `delivery.maxDeliveries` times.
        MaxDeliveries = "max_deliveries",
        /// A lease ran out (an older relay's code for what is now redelivered).
        LeaseExpired = "lease_expired",
        /// Not a relay envelope (invalid JSON, a missing field).
        Malformed = "malformed",
        /// No endpoint matched its subject.
        NoMatch = "no_match",
        /// The endpoint's mailbox is full.
        Backpressure = "backpressure",
        /// The sender's breaker for the endpoint is open.
        CircuitOpen = "circuit_open",
        /// The sender's bucket is empty.
        RateLimited = "rate_limited",
        /// Writing it failed.
        IoError = "io_error",
        /// Writing it failed: the disk is full.
        DiskFull = "disk_full",
    }
}

impl Code {
    /// Whether it is a budget code (DorkOS's `budgetCode`).
    #[must_use]
    pub const fn is_budget(self) -> bool {
        matches!(
            self,
            Code::HopLimit | Code::CycleDetected | Code::TtlExpired | Code::BudgetExhausted
        )
    }

    /// Whether a dead letter of this code is final and worth telling its
    /// sender about (a failure notice at its `replyTo`).
    #[must_use]
    pub const fn is_notifiable(self) -> bool {
        matches!(
            self,
            Code::Nack
                | Code::HopLimit
                | Code::CycleDetected
                | Code::TtlExpired
                | Code::BudgetExhausted
                | Code::AccessDenied
                | Code::MaxDeliveries
        )
    }

    /// Whether a copy of this code was refused at send time (it never
    /// reached that mailbox); every other dead letter was delivered first.
    /// `ttl_expired` is either.
    #[must_use]
    pub const fn is_at_send(self) -> bool {
        matches!(
            self,
            Code::NoMatch
                | Code::AccessDenied
                | Code::HopLimit
                | Code::CycleDetected
                | Code::BudgetExhausted
                | Code::Backpressure
                | Code::CircuitOpen
                | Code::IoError
                | Code::DiskFull
        )
    }

    /// Whether the consumer failed it (DorkOS's trace says `failed`; any
    /// other dead letter of a delivered message timed out).
    #[must_use]
    pub const fn is_consumer_failure(self) -> bool {
        matches!(
            self,
            Code::Nack | Code::LeaseExpired | Code::MaxDeliveries | Code::Malformed
        )
    }

    /// Whether writing failed (not a refusal: nothing to retry later).
    #[must_use]
    pub const fn is_io(self) -> bool {
        matches!(self, Code::IoError | Code::DiskFull)
    }

    /// DorkOS's publish rejection reason for a refusal of this code, if
    /// DorkOS has one.
    #[must_use]
    pub const fn rejection(self) -> Option<Rejection> {
        match self {
            Code::Backpressure => Some(Rejection::Backpressure),
            Code::CircuitOpen => Some(Rejection::CircuitOpen),
            Code::RateLimited => Some(Rejection::RateLimited),
            Code::HopLimit | Code::CycleDetected | Code::TtlExpired | Code::BudgetExhausted => {
                Some(Rejection::BudgetExceeded)
            }
            // A target that refused this sender (a peer's access rules,
            // through the bridge): DorkOS's one per-target permission
            // refusal, its initiate-consent gate. (Its own access rules
            // throw instead: no `rejected` entry, a 422 or ACCESS_DENIED.)
            Code::AccessDenied => Some(Rejection::InitiateDenied),
            _ => None,
        }
    }

    /// The word DorkOS's surfaces show for this code: its rejection
    /// reason, else relay's own word.
    #[must_use]
    pub const fn dorkos_reason(self) -> &'static str {
        match self.rejection() {
            Some(r) => r.as_str(),
            None => self.as_str(),
        }
    }
}

vocabulary! {
    /// DorkOS's publish rejection reasons (`PublishResult.rejected[].reason`,
    /// a trace's `rejectionCode`).
    "rejection reason", Rejection {
        Backpressure = "backpressure",
        CircuitOpen = "circuit_open",
        RateLimited = "rate_limited",
        BudgetExceeded = "budget_exceeded",
        InitiateDenied = "initiate_denied",
        UntrustedBridgePrincipal = "untrusted_bridge_principal",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every word of `all` round-trips through its string form, serde and
    /// SQLite, the words are unique, and they are `want`.
    fn check<T>(all: &[T], want: &[&str])
    where
        T: Copy + PartialEq + fmt::Debug + FromStr<Err = Unknown> + fmt::Display,
        T: serde::Serialize + serde::de::DeserializeOwned,
        T: rusqlite::ToSql + rusqlite::types::FromSql,
    {
        let words: Vec<String> = all.iter().map(ToString::to_string).collect();
        assert_eq!(words, want);
        let db = rusqlite::Connection::open_in_memory().unwrap();
        for (t, word) in all.iter().zip(want) {
            assert_eq!(word.parse::<T>(), Ok(*t));
            let json = serde_json::to_value(t).unwrap();
            assert_eq!(json, serde_json::Value::from(*word));
            assert_eq!(serde_json::from_value::<T>(json).unwrap(), *t);
            let (text, back): (String, T) = db
                .query_row("SELECT ?1, ?1", [t], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap();
            assert_eq!((text.as_str(), back), (*word, *t));
        }
        let mut unique = words.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), words.len(), "a word twice: {words:?}");
        let unknown = "no such word".parse::<T>().unwrap_err();
        assert_eq!(unknown.word, "no such word");
        assert!(serde_json::from_str::<T>("\"Pending\"").is_err());
    }

    #[test]
    fn statuses_are_the_index_words() {
        // The CHECK constraint of `messages.status` (src/store).
        check(Status::ALL, &["pending", "claimed", "acked", "failed"]);
        let dork: Vec<DorkStatus> = Status::ALL.iter().map(|s| s.dorkos()).collect();
        assert_eq!(
            dork,
            [
                DorkStatus::Pending,
                DorkStatus::Pending,
                DorkStatus::Delivered,
                DorkStatus::Failed
            ]
        );
    }

    /// The quoted words after `status` in SQL text (`status = 'x'`,
    /// `status IN ('x', 'y')`, `status != 'x'`), and after `CHECK (status IN`.
    fn sql_status_words(text: &str) -> Vec<String> {
        let mut words = Vec::new();
        for (i, _) in text.match_indices("status") {
            let rest = text[i + "status".len()..].trim_start();
            let rest = ["=", "!=", "NOT IN", "IN"]
                .iter()
                .find_map(|op| rest.strip_prefix(op))
                .map(str::trim_start);
            let Some(rest) = rest else { continue };
            let list = match rest.strip_prefix('(') {
                Some(inner) => inner.split(')').next().unwrap_or(""),
                None if rest.starts_with('\'') => rest
                    .get(..rest[1..].find('\'').map_or(0, |j| j + 2))
                    .unwrap_or(""),
                None => continue,
            };
            for w in list.split(',') {
                let w = w.trim();
                if let Some(w) = w.strip_prefix('\'').and_then(|w| w.strip_suffix('\'')) {
                    words.push(w.to_string());
                }
            }
        }
        words
    }

    #[test]
    fn every_status_written_in_sql_is_a_status() {
        // SQL compares and sets `messages.status` with literals (a partial
        // index is used only for a literal): each must be a Status word.
        fn walk(dir: &std::path::Path, out: &mut Vec<(String, String)>) {
            for entry in std::fs::read_dir(dir).unwrap().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    walk(&path, out);
                } else if path.extension().is_some_and(|e| e == "rs") && !path.ends_with("vocab.rs")
                {
                    let text = std::fs::read_to_string(&path).unwrap();
                    for w in sql_status_words(&text) {
                        out.push((path.display().to_string(), w));
                    }
                }
            }
        }
        let mut found = Vec::new();
        walk(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            &mut found,
        );
        assert!(found.len() > 20, "{found:?}");
        for (file, word) in &found {
            assert!(word.parse::<Status>().is_ok(), "{file}: status '{word}'");
        }
        // The CHECK constraint lists exactly the statuses.
        let schema = sql_status_words(include_str!("store/index.rs"));
        assert!(schema.starts_with(&["pending", "claimed", "acked", "failed"].map(String::from)));
        assert_eq!(
            sql_status_words(
                "x CHECK (status IN ('a','b')) AND status = 'c';\" status IN (?1, 'd' )"
            ),
            ["a", "b", "c", "d"]
        );
    }

    #[test]
    fn dorkos_statuses_are_dorkos_words() {
        // dorkos-http.md 5.8: index status, trace status.
        check(DorkStatus::ALL, &["pending", "delivered", "failed"]);
        check(
            TraceStatus::ALL,
            &["sent", "delivered", "failed", "timeout", "no_subscriber"],
        );
    }

    #[test]
    fn event_kinds_round_trip() {
        check(
            EventKind::ALL,
            &[
                "rate_limit_soft",
                "rate_limit_hard",
                "breaker_opened",
                "breaker_half_open",
                "breaker_closed",
                "backpressure_warning",
                "backpressure_rejected",
                "lease_expired",
                "redelivered",
                "dead_letter",
                "failure_notice",
                "failure_notice_refused",
                "requeued",
                "dlq_purged",
                "expired",
                "restored",
                "remote_span",
                "bridge_forwarded",
                "bridge_duplicate",
                "bridge_connected",
                "bridge_disconnected",
                "bridge_reconnected",
                "bridge_stopped",
            ],
        );
    }

    #[test]
    fn codes_round_trip_and_map_to_dorkos_reasons() {
        check(
            Code::ALL,
            &[
                "nack",
                "hop_limit",
                "cycle_detected",
                "ttl_expired",
                "budget_exhausted",
                "access_denied",
                "max_deliveries",
                "lease_expired",
                "malformed",
                "no_match",
                "backpressure",
                "circuit_open",
                "rate_limited",
                "io_error",
                "disk_full",
            ],
        );
        // dorkos-http.md 5.8: budget codes.
        let budget: Vec<&str> = Code::ALL
            .iter()
            .filter(|c| c.is_budget())
            .map(|c| c.as_str())
            .collect();
        assert_eq!(
            budget,
            [
                "hop_limit",
                "cycle_detected",
                "ttl_expired",
                "budget_exhausted"
            ]
        );
        // DorkOS's own refusal words are relay's codes, spelled alike.
        for c in [Code::Backpressure, Code::CircuitOpen, Code::RateLimited] {
            assert_eq!(c.dorkos_reason(), c.as_str());
        }
        assert_eq!(Code::TtlExpired.dorkos_reason(), "budget_exceeded");
        assert_eq!(Code::AccessDenied.dorkos_reason(), "initiate_denied");
        assert_eq!(Code::NoMatch.dorkos_reason(), "no_match");
    }

    #[test]
    fn rejections_are_dorkos_words() {
        // dorkos-http.md 5.8: publish rejection reason.
        check(
            Rejection::ALL,
            &[
                "backpressure",
                "circuit_open",
                "rate_limited",
                "budget_exceeded",
                "initiate_denied",
                "untrusted_bridge_principal",
            ],
        );
    }
}
