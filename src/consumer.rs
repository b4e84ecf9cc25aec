//! The consumer's fast path: claims and acks recorded through the journal
//! (as sends' rows are), so a plain `recv`, `recv --ack` or `ack` opens no
//! SQLite. Whatever opens the index next moves the records in
//! (`Store::ingest`), so `trace`, `metrics` and `status` see them.
//!
//! It is taken only when nothing needs the index, and then decides exactly
//! what the index would have:
//! - the index file looks sound (a damaged one is reported by the slow
//!   path, which opens it), and no batch log waits to be settled (opening
//!   the index settles them; while one could replay, acks must be durable
//!   in the index). DorkOS's index is kept in step by the Maildir
//!   operations themselves (`dorkos`), on either path;
//! - priority ranks come from the index only where a message of other
//!   than normal priority may be (`State::prioritized`): elsewhere all are
//!   normal, and FIFO needs no index;
//! - a claim is recorded through the journal only while no lease at the
//!   endpoint is past its deadline (`lease_due`: counting it needs the
//!   index); an ack, or a sweep that finds nothing to give back, only
//!   while no recorded lease there may have run out (`claims_due`, which
//!   also covers leases counted but not yet given back) and none has by
//!   the Maildir's clock either (claimed at + the default lease, what
//!   counts for a claim the index has no lease for). Claims with a lease
//!   lower both deadlines under the state lock while they are journaled,
//!   and the index sets them under the same lock after reading the
//!   journal, so neither is ever later than a recorded lease;
//! - an ack feeds a success to its (sender, endpoint) breaker, which changes
//!   nothing while the breaker is closed with no failures (or disabled);
//!   any other breaker, and every nack, goes through the index.
//!
//! The Maildir work is the same as the slow path's: the claims fsynced
//! (`cur/`, `new/`), the removals fsynced (`cur/`), once per batch; for
//! `recv --ack` the claims' two fsyncs come after the removals and are
//! theirs too (two in all, as the bare Maildir consume).

use std::collections::HashMap;

use crate::context::Ctx;
use crate::envelope::Envelope;
use crate::error::Result;
use crate::lease;
use crate::maildir::{AckOutcome, Mailbox};
use crate::output;
use crate::store::journal::Journal;
use crate::store::state::Locked;

/// Priority ranks of the pending messages at `mb` that are not normal:
/// none to look up on the fast path while no such message may be there
/// (`State::prioritized`), else from the index, which then also brings
/// the marks up to date (and the fast path closes it again: only a
/// process without the index open may journal, see `Ctx::may_skip_index`).
pub fn ranks(ctx: &mut Ctx, mb: &Mailbox) -> Result<HashMap<String, u8>> {
    let fast = ctx.may_skip_index();
    if fast
        && !Locked::acquire(ctx.home.root())?
            .get()
            .may_prioritize(&mb.name)
    {
        return Ok(HashMap::new());
    }
    let store = ctx.store()?;
    let ranks = store.pending_priorities(&mb.name)?;
    // If the marks cannot be brought up to date (a busy index, say), they
    // stay as they are and this claim is recorded through the index.
    if fast
        && store
            .begin()
            .and_then(|mut tx| {
                tx.track_priorities()?;
                tx.commit()
            })
            .is_ok()
    {
        ctx.close_store();
    }
    Ok(ranks)
}

/// Records claims (already fsynced) without the index, if the fast path
/// applies: the lease's deadline lowers `lease_due` and `claims_due`, and
/// the claims go to the journal, all under the state lock. `false` if it does not apply
/// (nothing done).
pub fn record_claims(
    ctx: &mut Ctx,
    mb: &Mailbox,
    envs: &[&Envelope],
    lease_until: Option<u64>,
    now: u64,
) -> Result<bool> {
    if !ctx.may_skip_index() {
        return Ok(false);
    }
    crate::reserve::balance(ctx.home.root());
    let mut state = Locked::acquire(ctx.home.root())?;
    if state.get().lease_past_due(std::iter::once(&mb.name), now) {
        return Ok(false);
    }
    if let Some(at) = lease_until {
        let lower = |m: &std::collections::BTreeMap<String, u64>| {
            m.get(&mb.name).is_none_or(|&due| at < due)
        };
        if lower(&state.get().lease_due) {
            state.get_mut().lease_due.insert(mb.name.clone(), at);
        }
        if lower(&state.get().claims_due) {
            state.get_mut().claims_due.insert(mb.name.clone(), at);
        }
        state.write()?;
    }
    let mut journal = Journal::default();
    for env in envs {
        journal.claimed(&mb.name, env, lease_until, now);
    }
    let size = journal.flush(ctx.home.root())?;
    drop(state);
    bound_journal(ctx, size);
    Ok(true)
}

/// Acks the claims `held` (message id, the `deliveryCount` it was received
/// at) in `mb` without the index, if the fast path applies to every one of
/// them: each still in `cur/`, held at that count, its lease not run out,
/// its breaker closed with no failures. They are removed under the mailbox
/// lock, `cur/` is fsynced once, and the acks go to the journal. With
/// `claims_unsynced` (claims of this process not fsynced yet: `recv --ack`)
/// `new/` is fsynced after `cur/`, which makes those claims durable too. `None` if
/// it does not apply (nothing done); else the ids acked (all of them,
/// unless another program removed one meanwhile).
pub fn ack(
    ctx: &mut Ctx,
    mb: &Mailbox,
    held: &[(String, Option<u32>)],
    now: u64,
    claims_unsynced: bool,
) -> Result<Option<Vec<String>>> {
    if held.is_empty() || !ctx.may_skip_index() {
        return Ok(None);
    }
    crate::reserve::balance(ctx.home.root());
    let default_ms = lease::default_ms(&ctx.config);
    let breakers = &ctx.config.reliability.circuit_breaker;
    let acked = {
        // As a sweep would: no claim given back while it is checked here.
        let _lock = mb.lock()?;
        let state = Locked::acquire(ctx.home.root())?;
        if state.get().claim_may_be_due(&mb.name, now) {
            return Ok(None);
        }
        for (id, count) in held {
            let Some(env) = mb.read_envelope("cur", id) else {
                return Ok(None);
            };
            let quiet = !breakers.enabled || {
                let b = state.get().breaker(&env.from, &mb.name);
                b.phase == crate::breaker::Phase::Closed && b.failures == 0
            };
            if !quiet || lease::check_holder(mb, id, None, *count, "ack", default_ms, now).is_some()
            {
                return Ok(None);
            }
        }
        drop(state);
        remove(mb, held, !crate::store::dorkos::present(ctx.home.root()))?
    };
    if claims_unsynced {
        mb.sync_claims()?;
    } else if !acked.is_empty() {
        crate::home::sync_dir(&mb.sub("cur"))?;
    }
    if acked.is_empty() {
        return Ok(Some(acked));
    }
    let mut journal = Journal::default();
    for id in &acked {
        journal.acked(&mb.name, id, now);
    }
    // A full disk does not undo the acks (the Maildir is the truth), as
    // when the index cannot record an ack.
    match journal.flush(ctx.home.root()) {
        Ok(size) => bound_journal(ctx, size),
        Err(e) if !e.is_full() => return Err(e),
        Err(e) => output::warn(&format!(
            "{} message(s) acked in '{}', but the index could not record it: {e}; once there is room, relay doctor --repair brings the index in line",
            acked.len(),
            mb.name
        )),
    }
    Ok(Some(acked))
}

/// Claims from which `remove` takes two threads.
const TWO_THREADS_FROM: usize = 16;

/// Removes the claims `held` from `cur/`; the ids removed, in order. From
/// `TWO_THREADS_FROM` on (and with no DorkOS index to keep in step, if not
/// `alone`) on two threads: most of a removal is the filesystem freeing
/// the file's blocks (here, with online discard, about as long as a
/// directory fsync), outside the directory's lock, so two overlap.
fn remove(mb: &Mailbox, held: &[(String, Option<u32>)], alone: bool) -> Result<Vec<String>> {
    let one_by_one = |part: &[(String, Option<u32>)]| -> Result<Vec<String>> {
        let mut acked = Vec::new();
        for (id, _) in part {
            if mb.ack(id)? == AckOutcome::Removed {
                acked.push(id.clone());
            }
        }
        Ok(acked)
    };
    if !alone || held.len() < TWO_THREADS_FROM {
        return one_by_one(held);
    }
    let (first, second) = held.split_at(held.len() / 2);
    std::thread::scope(|s| {
        let other = s.spawn(|| one_by_one(second));
        let first = one_by_one(first);
        let second = other
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        let mut acked = first?;
        acked.extend(second?);
        Ok(acked)
    })
}

/// Moves the journal into the index once it has grown past
/// `journalMaxBytes` (as a send does), so it stays bounded.
fn bound_journal(ctx: &mut Ctx, size: u64) {
    if size > ctx.config.journal_max_bytes
        && let Err(e) = ctx.store().and_then(crate::store::index::Store::ingest)
    {
        output::warn(&format!(
            "the index journal could not be moved into the index: {e}"
        ));
    }
}
