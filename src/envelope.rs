//! The message envelope (DorkOS-compatible JSON), its budget, and the pure
//! budget check applied per hop.
//!
//! Field names and order follow DorkOS; our additions are optional and
//! unknown fields written by other programs are preserved.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::pressure::Priority;
use crate::vocab::Code;

/// A message as stored in one Maildir file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Envelope {
    /// ULID; also the file name.
    pub id: String,
    /// The publish subject (a pattern on wildcard sends, as DorkOS does).
    pub subject: String,
    /// Sender principal.
    pub from: String,
    /// Where replies and failure notices go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    /// Hop and lifetime budget.
    pub budget: Budget,
    /// ISO-8601 creation time (ms precision, `Z`).
    pub created_at: String,
    /// Opaque payload.
    pub payload: Value,
    /// DorkOS correlation id across hops.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dispatch_id: Option<String>,
    /// Our trace id (additive); falls back to `dispatchId`, then `id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// Our priority lane (additive); absent means normal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<String>,
    /// How many claims of this message ran out of their lease (additive;
    /// absent means none): raised each time it goes back to `new/`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub delivery_count: u32,
    /// Fields written by other programs, kept verbatim.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Envelope {
    /// The trace this message belongs to.
    #[must_use]
    pub fn trace(&self) -> &str {
        self.trace_id
            .as_deref()
            .or(self.dispatch_id.as_deref())
            .unwrap_or(&self.id)
    }

    /// The priority lane (unknown or missing names are normal).
    #[must_use]
    pub fn priority(&self) -> Priority {
        Priority::parse(self.priority.as_deref())
    }

    /// Parses an envelope from file bytes, naming what is wrong.
    pub fn parse(bytes: &[u8]) -> std::result::Result<Self, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("not a relay envelope: {e}"))
    }

    /// Serializes as DorkOS does: pretty, two-space indent, no trailing newline.
    pub fn to_file_bytes(&self) -> Result<Vec<u8>> {
        serde_json::to_vec_pretty(self)
            .map_err(|e| Error::Data(format!("cannot serialize envelope {}: {e}", self.id)))
    }
}

/// Whether a count is zero (then it is left out of the file).
#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A new message id: a ULID whose time is `now_ms` and whose 80-bit
/// random part starts with the real clock's nanoseconds (mod 2^50, about 13
/// days), so ids minted by different processes within one millisecond still
/// sort in the order they were made (FIFO), also under a pinned test clock;
/// the low 30 bits are random to keep simultaneous ids distinct.
#[must_use]
pub fn new_id(now_ms: u64) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() & ((1u128 << 50) - 1));
    let random = u128::from(random_u64()) & ((1u128 << 30) - 1);
    ulid::Ulid::from_parts(now_ms, (nanos << 30) | random).to_string()
}

/// A ULID for the real clock with 80 random bits (names that only need to
/// be unique: journal keys, set-aside directories).
#[must_use]
pub fn random_ulid() -> ulid::Ulid {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    ulid::Ulid::from_parts(
        ms,
        (u128::from(random_u64()) << 64) | u128::from(random_u64()),
    )
}

/// 64 random bits from std's per-process random hash keys (seeded by the
/// kernel's getrandom), mixed with the clock so successive calls differ: no
/// random-number crate, no /dev/random poll at start-up.
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

/// DorkOS `RelayBudget`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Budget {
    /// Hops taken so far.
    pub hop_count: u32,
    /// Hop ceiling.
    pub max_hops: u32,
    /// Subjects already visited (cycle detection).
    #[serde(default)]
    pub ancestor_chain: Vec<String>,
    /// Absolute expiry, ms since the Unix epoch.
    pub ttl: u64,
    /// Remaining paid-call allowance.
    pub call_budget_remaining: u32,
}

/// Default call budget of a fresh message, as in DorkOS.
pub const DEFAULT_CALL_BUDGET: u32 = 10;

impl Budget {
    /// A fresh budget: no hops, the given ceiling, expiry `now + ttl_ms`.
    #[must_use]
    pub fn fresh(max_hops: u32, now: u64, ttl_ms: u64) -> Self {
        Budget {
            hop_count: 0,
            max_hops,
            ancestor_chain: Vec::new(),
            ttl: now.saturating_add(ttl_ms),
            call_budget_remaining: DEFAULT_CALL_BUDGET,
        }
    }

    /// Checks one hop to `target` at `now`, in DorkOS's order (first failure
    /// wins), and returns the budget the delivered copy carries: one more
    /// hop, `target` appended to the chain, one call less.
    pub fn hop(&self, target: &str, now: u64) -> std::result::Result<Budget, (Code, String)> {
        if self.hop_count >= self.max_hops {
            return Err((
                Code::HopLimit,
                format!("max hops exceeded ({}/{})", self.hop_count, self.max_hops),
            ));
        }
        if self.ancestor_chain.iter().any(|s| s == target) {
            return Err((
                Code::CycleDetected,
                format!("cycle detected: '{target}' is already in the ancestor chain"),
            ));
        }
        if now > self.ttl {
            return Err((
                Code::TtlExpired,
                format!("ttl expired {} ago", crate::clock::human_ms(now - self.ttl)),
            ));
        }
        if self.call_budget_remaining == 0 {
            return Err((Code::BudgetExhausted, "call budget exhausted".to_string()));
        }
        let mut next = self.clone();
        next.hop_count += 1;
        next.ancestor_chain.push(target.to_string());
        next.call_budget_remaining -= 1;
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_updates_budget() {
        let b = Budget::fresh(5, 1000, 3_600_000);
        let n = b
            .hop("a.b", 1000)
            .map_err(|e| e.1)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(n.hop_count, 1);
        assert_eq!(n.ancestor_chain, vec!["a.b".to_string()]);
        assert_eq!(n.call_budget_remaining, 9);
        assert_eq!(n.ttl, 3_601_000);
    }

    #[test]
    fn hop_refusals_in_order() {
        let mut b = Budget::fresh(1, 0, 10);
        b.hop_count = 1;
        b.ancestor_chain = vec!["x".into()];
        b.call_budget_remaining = 0;
        assert_eq!(b.hop("x", 100).err().map(|e| e.0), Some(Code::HopLimit));
        b.hop_count = 0;
        assert_eq!(
            b.hop("x", 100).err().map(|e| e.0),
            Some(Code::CycleDetected)
        );
        assert_eq!(b.hop("y", 100).err().map(|e| e.0), Some(Code::TtlExpired));
        assert_eq!(
            b.hop("y", 10).err().map(|e| e.0),
            Some(Code::BudgetExhausted)
        );
    }

    #[test]
    fn dorkos_envelope_round_trips_with_unknown_fields() {
        let text = r#"{
  "id": "01JZ0000000000000000000000",
  "subject": "relay.agent.x",
  "from": "agent:legacy",
  "budget": { "hopCount": 1, "maxHops": 5, "ancestorChain": ["relay.agent.x"], "ttl": 99, "callBudgetRemaining": 9 },
  "createdAt": "2026-01-01T00:00:00.000Z",
  "payload": { "content": "hi" },
  "dispatchId": "d-1",
  "somethingNew": [1, 2]
}"#;
        let e = Envelope::parse(text.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(e.trace(), "d-1");
        assert_eq!(
            e.extra.get("somethingNew"),
            Some(&serde_json::json!([1, 2]))
        );
        let back = e.to_file_bytes().unwrap_or_default();
        let again = Envelope::parse(&back).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(again, e);
        assert!(!back.ends_with(b"\n"));
    }

    #[test]
    fn missing_budget_is_rejected() {
        let text = r#"{"id":"x","subject":"a","from":"b","createdAt":"t","payload":1}"#;
        assert!(Envelope::parse(text.as_bytes()).is_err_and(|e| e.contains("budget")));
    }
}
