//! Where the reliability layer reads and writes: the state slots (buckets,
//! breakers, lease deadlines) plus somewhere to put index rows and events.
//!
//! Two kinds of ledger: an index transaction (`store::Tx`), which writes
//! rows and events into SQLite, and `Fast`, which appends them to the
//! journal so a plain send never opens SQLite. Both take the state lock
//! only when the state is first touched, after the index lock if there is
//! one (locks nest only in this order: mailboxes, index, state, journal;
//! the send pipeline nests none but the state inside the mailboxes).

use std::cell::{RefCell, RefMut};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::store::journal::Journal;
use crate::store::state::{self, Locked};
use crate::store::{Event, SentRow};
use crate::{breaker, bucket};

/// The state slots (`state.rs`), locked on first use and written back by `save`.
#[derive(Debug)]
pub struct LazyState {
    dir: PathBuf,
    held: RefCell<Option<Locked>>,
}

impl LazyState {
    /// Nothing locked yet; `dir` is the relay home.
    #[must_use]
    pub fn new(dir: &Path) -> Self {
        LazyState {
            dir: dir.to_path_buf(),
            held: RefCell::new(None),
        }
    }

    /// The locked state (locking it now if needed).
    pub fn lock(&self) -> Result<RefMut<'_, Locked>> {
        let mut held = self.held.borrow_mut();
        if held.is_none() {
            *held = Some(Locked::acquire(&self.dir)?);
        }
        RefMut::filter_map(held, Option::as_mut)
            .map_err(|_| Error::Data("the reliability state lock was not held".into()))
    }

    /// Writes the state back if it was changed and releases the lock; a
    /// later use locks it again.
    pub fn release(&self) -> Result<()> {
        let held = self.held.borrow_mut().take();
        held.map_or(Ok(()), Locked::save)
    }
}

/// What the reliability layer needs of a ledger.
pub trait Ledger {
    /// The state slots.
    fn state(&self) -> &LazyState;
    /// Records index rows for copies delivered or dead-lettered.
    fn record_sent(&self, rows: &[SentRow<'_>], now: u64) -> Result<()>;
    /// Records an event.
    fn event(&self, e: &Event<'_>, now: u64) -> Result<()>;

    /// The stored bucket of `sender`, if any.
    fn bucket(&self, sender: &str) -> Result<Option<bucket::State>> {
        Ok(self
            .state()
            .lock()?
            .get()
            .buckets
            .get(sender)
            .map(|b| b.state))
    }

    /// Stores `sender`'s bucket, counting a soft (`Some(true)`) or hard
    /// (`Some(false)`) hit.
    fn put_bucket(
        &self,
        sender: &str,
        next: &bucket::State,
        hit: Option<bool>,
        now: u64,
    ) -> Result<()> {
        let mut l = self.state().lock()?;
        let b = l
            .get_mut()
            .buckets
            .entry(sender.to_string())
            .or_insert(state::Bucket {
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
    fn reset_buckets(&self, sender: Option<&str>) -> Result<usize> {
        let mut l = self.state().lock()?;
        let buckets = &mut l.get_mut().buckets;
        Ok(match sender {
            Some(s) => usize::from(buckets.remove(s).is_some()),
            None => std::mem::take(buckets).len(),
        })
    }

    /// Every bucket, by sender.
    fn buckets(&self) -> Result<BTreeMap<String, state::Bucket>> {
        Ok(self.state().lock()?.get().buckets.clone())
    }

    /// The breaker of a pair (closed if it has none).
    fn breaker(&self, sender: &str, endpoint: &str) -> Result<breaker::State> {
        Ok(self.state().lock()?.get().breaker(sender, endpoint))
    }

    /// Stores a pair's breaker.
    fn put_breaker(
        &self,
        sender: &str,
        endpoint: &str,
        s: &breaker::State,
        now: u64,
    ) -> Result<()> {
        let mut l = self.state().lock()?;
        l.get_mut()
            .breakers
            .entry(sender.to_string())
            .or_default()
            .insert(
                endpoint.to_string(),
                state::Breaker {
                    state: *s,
                    updated_at: now,
                },
            );
        Ok(())
    }

    /// Every breaker with state, by sender then endpoint.
    fn breakers(&self) -> Result<BTreeMap<String, BTreeMap<String, state::Breaker>>> {
        Ok(self.state().lock()?.get().breakers.clone())
    }

    /// Pairs with a breaker (optionally one sender's, or one pair).
    fn breaker_pairs(
        &self,
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

    /// Records a dead letter at `endpoint`: its failed row and the
    /// `dead_letter` event. The one place a dead letter is accounted.
    fn dead_letter_row(&self, row: &SentRow<'_>, now: u64) -> Result<()> {
        let Some((code, reason)) = row.failure else {
            return Ok(());
        };
        self.record_sent(std::slice::from_ref(row), now)?;
        let env = row.envelope;
        self.event(
            &Event::dead_letter(Some(&env.from), row.endpoint, &env.id, code, reason),
            now,
        )
    }
}

/// A ledger without the index: rows and events go to the journal.
#[derive(Debug)]
pub struct Fast {
    state: LazyState,
    journal: RefCell<Journal>,
    dir: PathBuf,
}

impl Fast {
    /// A ledger over the relay home `dir`.
    #[must_use]
    pub fn new(dir: &Path) -> Self {
        Fast {
            state: LazyState::new(dir),
            journal: RefCell::new(Journal::default()),
            dir: dir.to_path_buf(),
        }
    }

    /// Appends the rows and events buffered so far to the journal; returns
    /// the journal's size after it (0 if there was nothing to append).
    pub fn flush(&self) -> Result<u64> {
        self.journal.borrow_mut().flush(&self.dir)
    }

    /// Withdraws the row of a copy recorded but then not delivered.
    pub fn unsent(&self, endpoint: &str, id: &str) {
        self.journal.borrow_mut().unsent(endpoint, id);
    }

    /// Writes the state back (releasing its lock), then appends the rows
    /// and events to the journal, even if the state could not be written;
    /// returns the journal's size after it, or the first error.
    pub fn commit(self) -> Result<u64> {
        let saved = self.state.release();
        let appended = self.flush();
        saved.and(appended)
    }
}

impl Ledger for Fast {
    fn state(&self) -> &LazyState {
        &self.state
    }

    fn record_sent(&self, rows: &[SentRow<'_>], now: u64) -> Result<()> {
        self.journal.borrow_mut().sent(rows, now);
        Ok(())
    }

    fn event(&self, e: &Event<'_>, now: u64) -> Result<()> {
        self.journal.borrow_mut().event(e, now);
        Ok(())
    }
}
