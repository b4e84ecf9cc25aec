//! The reliability state every send reads and writes: token buckets per
//! sender, circuit breakers per (sender, endpoint), and the earliest lease
//! deadline per endpoint.
//!
//! It lives in two small files beside the index rather than in SQLite,
//! because a send must not pay for opening the database (about 1 ms per
//! process, more than the whole durable delivery). The files `state.0` and
//! `state.1` are two slots, each a header line (`relay-state <generation>
//! <length> <checksum>`) and the state as JSON. A writer holds an exclusive
//! `flock` on `state.0`, reads both, and rewrites the older slot in place
//! with the next generation: no file is created or renamed per change. A
//! process killed mid-write leaves that slot failing its checksum, and the
//! other slot still holds the state before the change. The slots are not
//! fsynced: after a power loss limits and breakers may be a little behind,
//! which costs no message (the Maildir is the truth).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};
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

/// Everything in the state slots.
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
    /// Per endpoint: a time no later than the earliest lease deadline of
    /// any claim recorded there, counted or not (`consumer`: before it, no
    /// claim's recorded lease has run out). Lowered by every claim made
    /// through the journal, set from the index by `Tx::refresh_claims_due`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub claims_due: BTreeMap<String, u64>,
    /// Endpoints that may hold a pending or claimed message of other than
    /// normal priority: only there does a consumer need the index's ranks
    /// (`consumer::ranks`); `None` until the index was first asked (a
    /// home from before this was kept). Set once such a copy is visible,
    /// recomputed from the index by a consumer (`Tx::track_priorities`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prioritized: Option<BTreeSet<String>>,
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

    /// Forgets what a sender with no state would get anyway, if untouched
    /// since `before`: full buckets (`is_full`) and closed breakers with no
    /// failures. Returns how many entries went.
    pub fn prune(&mut self, before: u64, is_full: impl Fn(&str, &bucket::State) -> bool) -> usize {
        let count =
            |s: &State| s.buckets.len() + s.breakers.values().map(BTreeMap::len).sum::<usize>();
        let was = count(self);
        self.buckets
            .retain(|sender, b| b.state.updated_at >= before || !is_full(sender, &b.state));
        for pairs in self.breakers.values_mut() {
            pairs.retain(|_, b| {
                b.updated_at >= before
                    || b.state.phase != breaker::Phase::Closed
                    || b.state.failures > 0
            });
        }
        self.breakers.retain(|_, pairs| !pairs.is_empty());
        was - count(self)
    }

    /// Whether a consumer of `endpoint` needs the index's priority ranks.
    #[must_use]
    pub fn may_prioritize(&self, endpoint: &str) -> bool {
        self.prioritized
            .as_ref()
            .is_none_or(|s| s.contains(endpoint))
    }

    /// Whether a claim's recorded lease at `endpoint` may have run out
    /// before `now` (see `claims_due`).
    #[must_use]
    pub fn claim_may_be_due(&self, endpoint: &str, now: u64) -> bool {
        self.claims_due.get(endpoint).is_some_and(|&at| at < now)
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

/// The two slot files in `dir` (the relay home).
#[must_use]
pub fn files(dir: &Path) -> [PathBuf; 2] {
    [dir.join("state.0"), dir.join("state.1")]
}

/// One slot as read: its file, generation (0 if empty or invalid) and
/// length on disk.
#[derive(Debug)]
struct Slot {
    file: File,
    path: PathBuf,
    generation: u64,
    len: usize,
}

/// The state held under the exclusive lock; `save` writes it back if it was
/// changed, dropping without `save` discards the changes.
#[derive(Debug)]
pub struct Locked {
    slots: [Slot; 2],
    state: State,
    dirty: bool,
}

impl Locked {
    /// Takes the lock and reads the state (empty if there is none yet).
    pub fn acquire(dir: &Path) -> Result<Self> {
        let [p0, p1] = files(dir);
        let f0 = open_slot(&p0)?;
        crate::lockwait::flock(&f0, &p0, "the state lock")?;
        let f1 = open_slot(&p1)?;
        let (s0, st0) = read_slot(f0, p0)?;
        let (s1, st1) = read_slot(f1, p1)?;
        let damaged = s0.len > 0 && st0.is_none() && s1.len > 0 && st1.is_none();
        let state = match (st0, st1) {
            (Some(a), Some(b)) => {
                if s1.generation > s0.generation {
                    b
                } else {
                    a
                }
            }
            (Some(a), None) => a,
            (None, Some(b)) => b,
            (None, None) => {
                if damaged {
                    crate::output::warn(&format!(
                        "{} and {} are both damaged; rate limits and breakers start over",
                        s0.path.display(),
                        s1.path.display()
                    ));
                }
                State::default()
            }
        };
        Ok(Locked {
            slots: [s0, s1],
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

    /// Marks `endpoint` as holding a message of other than normal priority
    /// (`State::prioritized`; nothing to do while it is not tracked).
    pub fn mark_prioritized(&mut self, endpoint: &str) {
        if self
            .state
            .prioritized
            .as_ref()
            .is_some_and(|s| !s.contains(endpoint))
            && let Some(s) = &mut self.get_mut().prioritized
        {
            s.insert(endpoint.to_string());
        }
    }

    /// Writes the state back if it changed (into the older slot, in place),
    /// then releases the lock.
    pub fn save(mut self) -> Result<()> {
        self.write()
    }

    /// Writes the state back if it changed (into the older slot, in place),
    /// keeping the lock: what is done next under it comes after the write.
    pub fn write(&mut self) -> Result<()> {
        use std::os::unix::fs::FileExt;
        if !self.dirty {
            return Ok(());
        }
        let older = usize::from(self.slots[1].generation < self.slots[0].generation);
        let (o, n) = (&self.slots[older], &self.slots[1 - older]);
        let json = serde_json::to_vec(&self.state)
            .map_err(|e| Error::Data(format!("cannot encode the reliability state: {e}")))?;
        // Read generations are below GENERATION_MAX (a slot claiming more
        // is invalid), so this cannot wrap; at the limit numbering starts
        // over and the other slot is emptied below.
        let next = n.generation.max(o.generation) + 1;
        let renumber = next >= GENERATION_MAX;
        let generation = if renumber { 1 } else { next };
        let mut bytes = format!(
            "{MAGIC} {generation} {} {:016x}\n",
            json.len(),
            checksum(&json)
        )
        .into_bytes();
        bytes.extend_from_slice(&json);
        bytes.push(b'\n');
        o.file
            .write_all_at(&bytes, 0)
            .ctx("cannot write", &o.path)?;
        // A shorter state than the slot held: cut the rest (the header's
        // length already ignores it, so a crash before this is harmless).
        if bytes.len() < o.len {
            o.file
                .set_len(bytes.len() as u64)
                .ctx("cannot shorten", &o.path)?;
        }
        if renumber {
            n.file.set_len(0).ctx("cannot empty", &n.path)?;
            self.slots[1 - older].generation = 0;
            self.slots[1 - older].len = 0;
        }
        self.slots[older].generation = generation;
        self.slots[older].len = bytes.len();
        self.dirty = false;
        Ok(())
    }
}

const MAGIC: &str = "relay-state";
/// Generations at or above this are not ones relay wrote (2^62 saves is
/// beyond any lifetime): such a slot is ignored, so the counter can never
/// wrap and leave a stale slot forever newer than every save.
const GENERATION_MAX: u64 = 1 << 62;

/// FNV-1a, 64 bits: enough to tell a torn slot from a whole one.
fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn open_slot(path: &Path) -> Result<File> {
    Ok(crate::home::create_own(path, rustix::fs::OFlags::RDWR, "state slot")?.0)
}

/// Reads a slot: its state if the header and checksum hold.
fn read_slot(mut file: File, path: PathBuf) -> Result<(Slot, Option<State>)> {
    let mut raw = Vec::new();
    file.read_to_end(&mut raw).ctx("cannot read", &path)?;
    let parsed = parse_slot(&raw);
    let slot = Slot {
        file,
        path,
        generation: parsed.as_ref().map_or(0, |(g, _)| *g),
        len: raw.len(),
    };
    Ok((slot, parsed.map(|(_, s)| s)))
}

fn parse_slot(raw: &[u8]) -> Option<(u64, State)> {
    let nl = raw.iter().position(|&b| b == b'\n')?;
    let header = std::str::from_utf8(&raw[..nl]).ok()?;
    let mut words = header.split(' ');
    if words.next()? != MAGIC {
        return None;
    }
    let generation: u64 = words.next()?.parse().ok().filter(|&g| g < GENERATION_MAX)?;
    let len: usize = words.next()?.parse().ok()?;
    let sum = u64::from_str_radix(words.next()?, 16).ok()?;
    let json = raw.get(nl + 1..nl + 1 + len)?;
    if checksum(json) != sum {
        return None;
    }
    Some((generation, serde_json::from_slice(json).ok()?))
}

/// The state slots as one command uses them: locked when first touched,
/// written back and let go by `release` (dropping without it discards the
/// changes). Passed explicitly (`&mut`) to whatever reads or changes them.
#[derive(Debug)]
pub struct Slots {
    dir: PathBuf,
    held: Option<Locked>,
}

impl Slots {
    /// Nothing locked yet; `dir` is the relay home.
    #[must_use]
    pub fn new(dir: &Path) -> Self {
        Slots {
            dir: dir.to_path_buf(),
            held: None,
        }
    }

    /// The locked state (locking it now if needed).
    pub fn lock(&mut self) -> Result<&mut Locked> {
        if self.held.is_none() {
            self.held = Some(Locked::acquire(&self.dir)?);
        }
        self.held
            .as_mut()
            .ok_or_else(|| Error::Data("the reliability state lock was not held".into()))
    }

    /// Writes the state back if it was changed and releases the lock; a
    /// later use locks it again.
    pub fn release(&mut self) -> Result<()> {
        self.held.take().map_or(Ok(()), Locked::save)
    }

    /// The stored bucket of `sender`, if any.
    pub fn bucket(&mut self, sender: &str) -> Result<Option<bucket::State>> {
        Ok(self.lock()?.get().buckets.get(sender).map(|b| b.state))
    }

    /// Stores `sender`'s bucket, counting a soft (`Some(true)`) or hard
    /// (`Some(false)`) hit.
    pub fn put_bucket(
        &mut self,
        sender: &str,
        next: &bucket::State,
        hit: Option<bool>,
        now: u64,
    ) -> Result<()> {
        let b = self
            .lock()?
            .get_mut()
            .buckets
            .entry(sender.to_string())
            .or_insert(Bucket {
                state: *next,
                soft_hits: 0,
                hard_hits: 0,
                last_hit_at: None,
            });
        b.state = *next;
        match hit {
            Some(true) => b.soft_hits += 1,
            Some(false) => b.hard_hits += 1,
            None => return Ok(()),
        }
        b.last_hit_at = Some(now);
        Ok(())
    }

    /// Forgets buckets (all, or one sender's); returns how many.
    pub fn reset_buckets(&mut self, sender: Option<&str>) -> Result<usize> {
        let buckets = &mut self.lock()?.get_mut().buckets;
        Ok(match sender {
            Some(s) => usize::from(buckets.remove(s).is_some()),
            None => std::mem::take(buckets).len(),
        })
    }

    /// Every bucket, by sender.
    pub fn buckets(&mut self) -> Result<BTreeMap<String, Bucket>> {
        Ok(self.lock()?.get().buckets.clone())
    }

    /// The breaker of a pair (closed if it has none).
    pub fn breaker(&mut self, sender: &str, endpoint: &str) -> Result<breaker::State> {
        Ok(self.lock()?.get().breaker(sender, endpoint))
    }

    /// Stores a pair's breaker.
    pub fn put_breaker(
        &mut self,
        sender: &str,
        endpoint: &str,
        s: &breaker::State,
        now: u64,
    ) -> Result<()> {
        self.lock()?
            .get_mut()
            .breakers
            .entry(sender.to_string())
            .or_default()
            .insert(
                endpoint.to_string(),
                Breaker {
                    state: *s,
                    updated_at: now,
                },
            );
        Ok(())
    }

    /// Every breaker with state, by sender then endpoint.
    pub fn breakers(&mut self) -> Result<BTreeMap<String, BTreeMap<String, Breaker>>> {
        Ok(self.lock()?.get().breakers.clone())
    }

    /// Pairs with a breaker (optionally one sender's, or one pair).
    pub fn breaker_pairs(
        &mut self,
        sender: Option<&str>,
        endpoint: Option<&str>,
    ) -> Result<Vec<(String, String)>> {
        Ok(self
            .breakers()?
            .into_iter()
            .filter(|(s, _)| sender.is_none_or(|want| want == s))
            .flat_map(|(s, pairs)| pairs.into_keys().map(move |e| (s.clone(), e)))
            .filter(|(_, e)| endpoint.is_none_or(|want| want == e))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The state, read under the lock and released at once.
    fn read(dir: &Path) -> Result<State> {
        Ok(Locked::acquire(dir)?.state)
    }

    #[test]
    fn changes_are_kept_only_when_saved_and_alternate_slots() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut l = Locked::acquire(dir.path()).expect("lock");
        l.get_mut().lease_due.insert("a".into(), 5);
        drop(l);
        assert_eq!(read(dir.path()).expect("read"), State::default());
        for at in 1..=3 {
            let mut l = Locked::acquire(dir.path()).expect("lock");
            l.get_mut().lease_due.insert("a".into(), at);
            l.save().expect("save");
            assert_eq!(
                read(dir.path()).expect("read").lease_due.get("a"),
                Some(&at)
            );
        }
        let [p0, p1] = files(dir.path());
        let g = |p: &Path| parse_slot(&std::fs::read(p).expect("slot")).map(|(g, _)| g);
        assert_eq!(
            (g(&p0), g(&p1)),
            (Some(3), Some(2)),
            "each save writes the older slot"
        );
    }

    #[test]
    fn a_torn_slot_falls_back_to_the_other_and_two_start_over() {
        let dir = tempfile::tempdir().expect("tempdir");
        for at in [7, 8] {
            let mut l = Locked::acquire(dir.path()).expect("lock");
            l.get_mut().lease_due.insert("a".into(), at);
            l.save().expect("save");
        }
        // Slot 1 holds generation 2 (8); tear it: slot 0's 7 is what is left.
        let [p0, p1] = files(dir.path());
        let mut raw = std::fs::read(&p1).expect("slot");
        let end = raw.len() - 5;
        raw[end] ^= 0x20;
        std::fs::write(&p1, &raw).expect("tear");
        assert_eq!(read(dir.path()).expect("read").lease_due.get("a"), Some(&7));
        std::fs::write(&p0, b"relay-state 9 2 0\n{}").expect("garbage");
        assert_eq!(read(dir.path()).expect("read"), State::default());
    }

    #[test]
    fn a_shorter_state_shrinks_the_slot() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut l = Locked::acquire(dir.path()).expect("lock");
        for i in 0..50 {
            l.get_mut().lease_due.insert(format!("endpoint.{i}"), i);
        }
        l.save().expect("save");
        for _ in 0..2 {
            let mut l = Locked::acquire(dir.path()).expect("lock");
            l.get_mut().lease_due.clear();
            l.save().expect("save");
        }
        assert_eq!(read(dir.path()).expect("read"), State::default());
        for p in files(dir.path()) {
            let len = std::fs::metadata(&p).expect("slot").len();
            assert!(len < 100, "{} is {len} bytes", p.display());
        }
    }

    #[test]
    fn generations_at_the_limit_start_over_instead_of_freezing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let [p0, p1] = files(dir.path());
        let slot = |generation: u64, json: &str| {
            format!(
                "{MAGIC} {generation} {} {:016x}\n{json}\n",
                json.len(),
                checksum(json.as_bytes())
            )
        };
        std::fs::write(&p0, slot(GENERATION_MAX - 1, r#"{"leaseDue":{"a":1}}"#)).expect("slot");
        std::fs::write(&p1, slot(u64::MAX, r#"{"leaseDue":{"a":9}}"#)).expect("slot");
        assert_eq!(read(dir.path()).expect("read").lease_due.get("a"), Some(&1));
        for at in 2..=4 {
            let mut l = Locked::acquire(dir.path()).expect("lock");
            l.get_mut().lease_due.insert("a".into(), at);
            l.save().expect("save");
            assert_eq!(
                read(dir.path()).expect("read").lease_due.get("a"),
                Some(&at)
            );
        }
    }
}
