//! Looking at a mailbox without claiming anything (`relay peek`, the MCP
//! server's `relay_inbox`): pending (`new/`), claimed (`cur/`) and failed
//! (`failed/`, with their reason sidecars) messages, oldest first.
//!
//! Read-only: nothing is renamed, no lease is swept, the index is neither
//! opened nor written. Files are read as `recv` reads them (regular files
//! only, `O_NOFOLLOW`, `O_NONBLOCK`, within the read cap); a foreign entry
//! (symlink, FIFO, directory, oversize file, not an envelope) is listed
//! with what is wrong with it, never followed or waited on.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::envelope::Envelope;
use crate::error::{Error, Result};
use crate::home::{Home, Unreadable};
use crate::maildir::{Mailbox, Reason};
use crate::vocab::Status;

/// Where a message is in its mailbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// In `new/`: waiting for a receiver.
    Pending,
    /// In `cur/`: claimed, not yet acked or nacked.
    Claimed,
    /// In `failed/`: dead-lettered.
    Failed,
}

impl State {
    /// The word used in output.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        self.status().as_str()
    }

    /// The index status of a message in this state.
    #[must_use]
    pub fn status(self) -> Status {
        match self {
            State::Pending => Status::Pending,
            State::Claimed => Status::Claimed,
            State::Failed => Status::Failed,
        }
    }

    /// The mailbox subdirectory that holds messages in this state.
    #[must_use]
    pub fn subdir(self) -> &'static str {
        match self {
            State::Pending => "new",
            State::Claimed => "cur",
            State::Failed => "failed",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which messages a peek lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Filter {
    /// `new/` only (the default, as DorkOS's inbox).
    #[default]
    Pending,
    /// `cur/` only.
    Claimed,
    /// `failed/` only.
    Failed,
    /// All three.
    All,
}

impl Filter {
    /// The states this filter lists.
    #[must_use]
    pub fn states(self) -> &'static [State] {
        match self {
            Filter::Pending => &[State::Pending],
            Filter::Claimed => &[State::Claimed],
            Filter::Failed => &[State::Failed],
            Filter::All => &[State::Pending, State::Claimed, State::Failed],
        }
    }
}

impl FromStr for Filter {
    type Err = Error;

    /// `pending`, `claimed`, `failed`, `all`, and the aliases DorkOS's
    /// library takes: `new`/`unread` (pending), `cur`/`read` (claimed).
    fn from_str(s: &str) -> Result<Self> {
        match (s, s.parse::<Status>()) {
            (_, Ok(Status::Pending)) | ("new" | "unread", _) => Ok(Filter::Pending),
            (_, Ok(Status::Claimed)) | ("cur" | "read", _) => Ok(Filter::Claimed),
            (_, Ok(Status::Failed)) => Ok(Filter::Failed),
            ("all", _) => Ok(Filter::All),
            (other, _) => Err(Error::Data(format!(
                "invalid status '{}': use pending, claimed, failed or all",
                other.escape_debug()
            ))),
        }
    }
}

/// One message file as seen by a peek.
#[derive(Debug, Clone)]
pub struct Peeked {
    /// The file's id (its name without `.json`).
    pub id: String,
    /// Where it is.
    pub state: State,
    /// Its size in bytes, as `lstat` reports it.
    pub size: u64,
    /// The envelope, when the file is one (`None`: see `problem`).
    pub envelope: Option<Envelope>,
    /// Why the file is not shown as an envelope (a symlink, a FIFO, over
    /// the read cap, not JSON, an id that does not match its name).
    pub problem: Option<String>,
    /// For claimed messages: when they were claimed (ms; the rename into
    /// `cur/`, as the lease's fallback reads it).
    pub claimed_at: Option<u64>,
    /// For dead letters: the reason sidecar, if readable.
    pub reason: Option<Reason>,
}

impl Peeked {
    /// The message as one JSON object: the envelope's fields (as
    /// `recv --json` prints them, `deliveryCount` included) plus `status`,
    /// `sizeBytes`, `claimedAt` (claimed) and `failure` {`reason`, `code`,
    /// `failedAt`} (failed); a file that is no envelope gives `id`,
    /// `status`, `sizeBytes` and `problem`.
    #[must_use]
    pub fn to_json(&self) -> Value {
        let mut map = match self.envelope.as_ref().map(serde_json::to_value) {
            Some(Ok(Value::Object(map))) => map,
            _ => {
                let mut map = Map::new();
                map.insert("id".into(), self.id.clone().into());
                map
            }
        };
        if let Some(env) = &self.envelope {
            map.insert("deliveryCount".into(), env.delivery_count.into());
        }
        map.insert("status".into(), self.state.as_str().into());
        map.insert("sizeBytes".into(), self.size.into());
        if let Some(p) = &self.problem {
            map.insert("problem".into(), p.clone().into());
        }
        if let Some(at) = self.claimed_at {
            map.insert("claimedAt".into(), crate::clock::iso8601(at).into());
        }
        if self.state == State::Failed {
            let failure = self.reason.as_ref().map_or(Value::Null, |r| {
                serde_json::json!({
                    "reason": r.reason,
                    "code": r.code,
                    "failedAt": r.failed_at,
                })
            });
            map.insert("failure".into(), failure);
        }
        Value::Object(map)
    }
}

/// The result of a peek.
#[derive(Debug, Clone)]
pub struct Listing {
    /// The endpoint looked at.
    pub endpoint: String,
    /// Up to the limit, oldest first.
    pub messages: Vec<Peeked>,
    /// How many message files matched the filter (listed or not).
    pub total: usize,
}

/// Lists up to `limit` messages of `endpoint` in the states of `filter`,
/// oldest first (ids are ULIDs: FIFO order), without claiming or changing
/// anything. Fails as `recv` does for an endpoint that does not exist
/// (69) or a mailbox that is a symlink or world-writable (77).
pub fn peek(home: &Home, endpoint: &str, filter: Filter, limit: usize) -> Result<Listing> {
    let mb = Mailbox::open_endpoint(home, endpoint)?;
    let mut ids: Vec<(String, State)> = Vec::new();
    for &state in filter.states() {
        ids.extend(mb.list(state.subdir())?.into_iter().map(|id| (id, state)));
    }
    ids.sort_unstable();
    let total = ids.len();
    let mut messages = Vec::with_capacity(total.min(limit));
    for (id, state) in ids {
        if messages.len() >= limit {
            break;
        }
        // Gone since the listing (claimed, acked, dead-lettered): the next
        // look shows where it went.
        if let Some(p) = look(&mb, id, state) {
            messages.push(p);
        }
    }
    Ok(Listing {
        endpoint: mb.name,
        messages,
        total,
    })
}

/// Reads one message file for a peek; `None` if it is no longer there.
fn look(mb: &Mailbox, id: String, state: State) -> Option<Peeked> {
    let sub = state.subdir();
    let size = std::fs::symlink_metadata(mb.sub(sub).join(format!("{id}.json")))
        .ok()?
        .len();
    let (envelope, problem) = match mb.read(sub, &id) {
        Ok(bytes) => match Envelope::parse(&bytes) {
            Ok(env) if env.id == id => (Some(env), None),
            Ok(env) => (
                None,
                Some(format!(
                    "file name '{id}.json' does not match envelope id '{}'",
                    env.id
                )),
            ),
            Err(problem) => (None, Some(problem)),
        },
        Err(Unreadable::Missing) => return None,
        Err(why) => (None, Some(format!("not read: {why}"))),
    };
    let claimed_at = (state == State::Claimed)
        .then(|| mb.claimed_at(&id))
        .flatten();
    let reason = (state == State::Failed)
        .then(|| mb.read_reason(&id))
        .flatten();
    Some(Peeked {
        id,
        state,
        size,
        envelope,
        problem,
        claimed_at,
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_with_dorkos_aliases() {
        for (word, want) in [
            ("pending", Filter::Pending),
            ("new", Filter::Pending),
            ("unread", Filter::Pending),
            ("claimed", Filter::Claimed),
            ("cur", Filter::Claimed),
            ("read", Filter::Claimed),
            ("failed", Filter::Failed),
            ("all", Filter::All),
        ] {
            assert_eq!(word.parse::<Filter>().ok(), Some(want), "{word}");
        }
        let err = "done".parse::<Filter>().err().map(|e| e.to_string());
        assert!(err.is_some_and(|m| m.contains("'done'")));
    }
}
