//! The reliability state every send reads and writes: token buckets per
//! sender, circuit breakers per (sender, endpoint), and the earliest lease
//! deadline per endpoint.
//!
//! It lives in `state.json` beside the index rather than in SQLite because a
//! send must not pay for opening the database (about 1 ms per process, more
//! than the whole durable delivery): reading and rewriting this small file
//! under `locks/state.lock` is a handful of syscalls. Writers take the lock
//! exclusively, read, change, and replace the file with a rename, so a
//! process killed at any moment leaves either the old state or the new one.
//! The file is not fsynced: after a power loss the limits and breakers may
//! be a little behind, which costs no message (the Maildir is the truth).

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};
use crate::home::{self, FILE_MODE};
use crate::{breaker, bucket};

/// A sender's bucket with its hit counters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Bucket {
    /// Tokens as last written.
    #[serde(flatten)]
    pub state: bucket::State,
    /// Soft-threshold hits ever.
    pub soft_hits: u64,
    /// Hard refusals ever.
    pub hard_hits: u64,
    /// Time of the last hit of either kind.
    pub last_hit_at: Option<u64>,
}

/// A pair's breaker and when it last changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Breaker {
    /// The breaker.
    #[serde(flatten)]
    pub state: breaker::State,
    /// When it was last written (ms).
    pub updated_at: u64,
}

/// Everything in `state.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct State {
    /// Per sender.
    pub buckets: BTreeMap<String, Bucket>,
    /// Per sender, then endpoint.
    pub breakers: BTreeMap<String, BTreeMap<String, Breaker>>,
    /// Per endpoint: the earliest lease deadline not yet counted. A send to
    /// an endpoint whose deadline has passed opens the index to count it.
    pub lease_due: BTreeMap<String, u64>,
}

impl State {
    /// The breaker of a pair (closed if it has none).
    #[must_use]
    pub fn breaker(&self, sender: &str, endpoint: &str) -> breaker::State {
        self.breakers
            .get(sender)
            .and_then(|m| m.get(endpoint))
            .map(|b| b.state)
            .unwrap_or_default()
    }

    /// Whether a lease at one of `endpoints` is past its deadline at `now`.
    pub fn lease_past_due<'a>(
        &self,
        mut endpoints: impl Iterator<Item = &'a String>,
        now: u64,
    ) -> bool {
        endpoints.any(|ep| self.lease_due.get(ep).is_some_and(|&at| at < now))
    }
}

/// `state.json` in `dir` (the relay home).
#[must_use]
pub fn file(dir: &Path) -> PathBuf {
    dir.join("state.json")
}

/// The state, read under the lock and released at once (for reports).
pub fn read(dir: &Path) -> Result<State> {
    Ok(Locked::acquire(dir)?.state)
}

/// The state held under the exclusive lock; `save` writes it back if it was
/// changed, dropping without `save` discards the changes.
#[derive(Debug)]
pub struct Locked {
    _lock: File,
    dir: PathBuf,
    state: State,
    dirty: bool,
}

impl Locked {
    /// Takes the lock and reads the state (empty if there is none yet).
    pub fn acquire(dir: &Path) -> Result<Self> {
        let lock_path = dir.join("locks").join("state.lock");
        let open = || {
            OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(FILE_MODE)
                .open(&lock_path)
        };
        let lock = match open() {
            Err(e) if e.kind() == ErrorKind::NotFound => {
                home::create_dir_secure(&dir.join("locks"), false)?;
                open()
            }
            other => other,
        }
        .ctx("cannot open lock", &lock_path)?;
        lock.lock().ctx("cannot lock", &lock_path)?;
        let state = load(&file(dir))?;
        Ok(Locked {
            _lock: lock,
            dir: dir.to_path_buf(),
            state,
            dirty: false,
        })
    }

    /// The state as read (and changed so far).
    #[must_use]
    pub fn get(&self) -> &State {
        &self.state
    }

    /// The state, to change; marks it for writing.
    pub fn get_mut(&mut self) -> &mut State {
        self.dirty = true;
        &mut self.state
    }

    /// Writes the state back if it changed, then releases the lock.
    pub fn save(self) -> Result<()> {
        if !self.dirty {
            return Ok(());
        }
        let path = file(&self.dir);
        let tmp = self.dir.join("state.json.tmp");
        let bytes = serde_json::to_vec(&self.state)
            .map_err(|e| Error::Data(format!("cannot encode the reliability state: {e}")))?;
        let written = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(FILE_MODE)
            .open(&tmp)
            .and_then(|mut f| f.write_all(&bytes));
        written
            .and_then(|()| fs::rename(&tmp, &path))
            .ctx("cannot write", &path)
    }
}

/// Reads `path`; a file that does not parse (torn by a power loss, or
/// edited by hand) is moved aside with a warning and the state starts over:
/// refusing every send until someone repairs it would be worse.
fn load(path: &Path) -> Result<State> {
    let mut raw = Vec::new();
    match File::open(path) {
        Ok(mut f) => f.read_to_end(&mut raw).ctx("cannot read", path)?,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(State::default()),
        Err(e) => return Err(Error::io("cannot open", path, e)),
    };
    match serde_json::from_slice(&raw) {
        Ok(state) => Ok(state),
        Err(e) => {
            let aside = path.with_extension("json.damaged");
            fs::rename(path, &aside).ctx("cannot move aside", path)?;
            eprintln!(
                "relay: warning: {} was damaged ({e}); rate limits and breakers start over (the damaged file is kept as {})",
                path.display(),
                aside.display()
            );
            Ok(State::default())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_are_kept_only_when_saved() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut l = Locked::acquire(dir.path()).expect("lock");
        l.get_mut().lease_due.insert("a".into(), 5);
        drop(l);
        assert_eq!(read(dir.path()).expect("read"), State::default());
        let mut l = Locked::acquire(dir.path()).expect("lock");
        l.get_mut().lease_due.insert("a".into(), 5);
        l.save().expect("save");
        assert_eq!(read(dir.path()).expect("read").lease_due.get("a"), Some(&5));
    }

    #[test]
    fn a_damaged_file_is_moved_aside_and_the_state_starts_over() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(file(dir.path()), b"{\"buckets\": {").expect("write");
        assert_eq!(read(dir.path()).expect("read"), State::default());
        assert!(dir.path().join("state.json.damaged").exists());
    }
}
