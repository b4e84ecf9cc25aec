//! The send pipeline after validation, for one message or a batch: budget
//! per endpoint, then (under the endpoints' locks) backpressure, rate limit
//! and breakers against the state slots (the index only for idempotency keys
//! and leases past their deadline), then durable delivery (fsync per message,
//! or one group commit for a batch), then the index rows, dead letters and
//! failure notices appended to the journal.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::json;

use crate::breaker::{Decision as BreakerDecision, Event as BreakerEvent};
use crate::config::{Backpressure, Reliability};
use crate::context::Ctx;
use crate::envelope::{Budget, Envelope};
use crate::error::{Error, Result};
use crate::maildir::Mailbox;
use crate::output;
use crate::pressure::{self, Priority};
use crate::reliability::{self, RateOutcome};
use crate::store::batchlog;
use crate::store::index::Store;
use crate::store::journal::Outbox;
use crate::store::rows::{Event as StoreEvent, SentRow};
use crate::store::state::Slots;
use crate::vocab::{Code, EventKind};
use crate::{notice, reserve};

/// How delivered files are made durable.
pub enum Durability<'a> {
    /// fsync each file before its rename and `new/` after it.
    PerMessage,
    /// Group commit: append every file to the batch log and fsync it once,
    /// then deliver the files without fsync (see `batchlog`).
    Logged(&'a mut batchlog::Log),
    /// No fsync at all (unsafe: a power loss can lose acknowledged messages).
    None,
}

/// What became of a message at one endpoint.
#[derive(Debug)]
pub enum Fate {
    /// Delivered (the copy written, and whether it is a breaker probe).
    Delivered(Box<Envelope>, bool),
    /// Written to the endpoint's `failed/` (code, reason).
    DeadLettered(Code, String),
    /// Refused for now; nothing written for it (code, message, retry-after).
    Refused(Code, String, Option<u64>),
}

/// What became of one send.
#[derive(Debug)]
pub enum Delivery {
    /// The send ran: each endpoint's fate, and warnings for the sender.
    Done {
        /// Per endpoint.
        fates: Vec<(String, Fate)>,
        /// Soft limits, backpressure.
        warnings: Vec<String>,
    },
    /// The idempotency key was used within its window by this message id.
    Duplicate(String),
}

/// One message to send.
pub struct Job {
    env: Envelope,
    key: Option<String>,
    fates: Vec<(String, Option<Fate>)>,
    hops: Vec<Option<Budget>>,
    probes: Vec<bool>,
    warnings: Vec<String>,
    /// Its idempotency key was claimed for it (and is released if nothing
    /// is delivered).
    key_claimed: bool,
    result: Option<Result<Delivery>>,
}

impl Job {
    /// A send of `env` to `targets` (sorted, de-duplicated endpoints).
    #[must_use]
    pub fn new(env: Envelope, targets: Vec<String>, key: Option<String>) -> Self {
        Job {
            env,
            key,
            fates: targets.into_iter().map(|t| (t, None)).collect(),
            hops: Vec::new(),
            probes: Vec::new(),
            warnings: Vec::new(),
            key_claimed: false,
            result: None,
        }
    }

    /// Adds a warning for the sender (reported with the delivery's own).
    pub fn warn(&mut self, warning: String) {
        self.warnings.push(warning);
    }

    /// The idempotency key, if any.
    #[must_use]
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// The envelope as sent (before the per-endpoint hop).
    #[must_use]
    pub fn envelope(&self) -> &Envelope {
        &self.env
    }

    /// The outcome, once `deliver` ran.
    pub fn take_result(&mut self) -> Result<Delivery> {
        self.result.take().unwrap_or_else(|| {
            Err(Error::Data(format!(
                "message {} was not processed",
                self.env.id
            )))
        })
    }

    fn open(&self) -> impl Iterator<Item = (usize, &String)> {
        self.fates
            .iter()
            .enumerate()
            .filter(|(_, (_, f))| f.is_none())
            .map(|(i, (ep, _))| (i, ep))
    }
}

/// Runs the pipeline for every job at `now`; each job's result is set.
/// Errors returned here are store or disk failures that stop the batch
/// before any of its copies became visible.
///
/// The locks, each held only for what needs it, never one while waiting
/// for another held by someone else: the index (idempotency keys, leases
/// past their deadline) before any mailbox lock; the mailbox locks (taken
/// all at once, see `lock_all`) from the depth count to the last rename;
/// the state lock only for the decision and its write, never across the
/// delivery. A sender stalled in delivery to one endpoint holds only that
/// endpoint's lock, so it keeps no sender to another endpoint waiting.
pub fn deliver(
    ctx: &mut Ctx,
    jobs: &mut [Job],
    durability: Durability<'_>,
    now: u64,
) -> Result<()> {
    let started = std::time::Instant::now();
    let rel = ctx.config.reliability.clone();
    let key_window_ms = ctx.config.idempotency_window_secs.saturating_mul(1000);

    // Budget: pure, per endpoint (a wildcard send can revisit a chain member).
    for job in jobs.iter_mut() {
        for (ep, fate) in &mut job.fates {
            match job.env.budget.hop(ep, now) {
                Ok(b) => job.hops.push(Some(b)),
                Err((code, reason)) => {
                    job.hops.push(None);
                    *fate = Some(Fate::DeadLettered(code, reason));
                }
            }
        }
        job.probes = vec![false; job.fates.len()];
    }

    // Every endpoint still open after the budget check, sorted.
    let eps: BTreeSet<String> = jobs
        .iter()
        .flat_map(|j| j.open().map(|(_, ep)| ep.clone()))
        .collect();

    // A fan-out holds every endpoint's lock at once: refused now if this
    // process may not open that many files, before anything is written.
    if rel.backpressure.enabled {
        room_for_locks(eps.len())?;
    }

    let (locks, mut slots, mut out) = match admit(ctx, jobs, &eps, &rel, key_window_ms, now) {
        Ok(admitted) => admitted,
        Err(e) => {
            give_back_keys(ctx, jobs);
            return Err(e);
        }
    };

    // The admitted copies, each with its own hop of the budget. Their index
    // rows go to the journal before any of them is visible, so the index
    // never lacks a message a send reported (a full disk refuses the
    // append, and then nothing is delivered).
    let mut work: Vec<Work> = Vec::new();
    for (j, job) in jobs.iter_mut().enumerate() {
        if job.result.is_some() {
            continue;
        }
        for i in 0..job.fates.len() {
            if job.fates[i].1.is_none()
                && let Some(budget) = job.hops[i].take()
            {
                let copy = Envelope {
                    budget,
                    ..job.env.clone()
                };
                let row = SentRow {
                    endpoint: &job.fates[i].0,
                    envelope: &copy,
                    failure: None,
                    probe: job.probes[i],
                };
                out.sent(&[row], now);
                work.push((j, i, job.fates[i].0.clone(), copy));
            }
        }
    }
    let home = &ctx.home;
    // What could not be done once copies may be visible: reported as a
    // warning with each result, never as a failure (a retry would deliver
    // them twice).
    let mut problems: Vec<String> = Vec::new();
    let mut stop = None;
    // Nothing is visible yet: a journal that cannot take the rows (a full
    // disk, say) refuses the whole send with its own error.
    let journal_size = match out.flush(home.root()) {
        Ok(size) => size,
        Err(e) => {
            give_back_keys(ctx, jobs);
            return Err(e);
        }
    };
    let predicted = dorkos_rows(home.root(), jobs, &work, started, now);
    let written: Vec<Written> = match durability {
        Durability::Logged(log) => match logged_commit(home, log, &work) {
            Ok((results, problem)) => {
                problems.extend(problem);
                results
            }
            Err(e) => {
                // Nothing delivered: the rows go again, and the batch stops.
                let results = work
                    .iter()
                    .map(|_| Err(Error::Data(e.to_string())))
                    .collect();
                stop = Some(e);
                results
            }
        },
        plain => {
            let sync = matches!(plain, Durability::PerMessage);
            parallel_map(&work, |(_, _, ep, copy)| {
                Mailbox::at(home, ep).deliver(copy, sync)
            })
        }
    };
    let mut io_failures: Vec<(usize, String, bool)> = Vec::new();
    for ((j, i, ep, copy), result) in work.into_iter().zip(written) {
        let job = &mut jobs[j];
        job.fates[i].1 = Some(match result {
            Ok(unsynced) => {
                if let Some(e) = unsynced {
                    job.warnings.push(format!(
                        "delivered to '{ep}', but it may not survive a power loss: {e}"
                    ));
                }
                Fate::Delivered(Box::new(copy), job.probes[i])
            }
            Err(e) => {
                out.unsent(&ep, &copy.id);
                crate::store::dorkos::unsent(home.root(), &ep, &copy.id);
                io_failures.push((j, ep, job.probes[i]));
                let code = if e.is_full() {
                    Code::DiskFull
                } else {
                    Code::IoError
                };
                Fate::Refused(code, e.to_string(), None)
            }
        });
    }
    drop(locks);

    // Copies refused while others were delivered are dead-lettered, so an
    // exit 0 never hides a lost copy; when all were refused, nothing is
    // written and the sender retries the whole send.
    let mut notices = Vec::new();
    for job in jobs.iter_mut().filter(|j| j.result.is_none()) {
        let any = job
            .fates
            .iter()
            .any(|(_, f)| matches!(f, Some(Fate::Delivered(..))));
        for (ep, fate) in &mut job.fates {
            let mb = Mailbox::at(&ctx.home, ep);
            match fate {
                Some(Fate::DeadLettered(code, reason)) => {
                    let code = *code;
                    if let Err(e) = mb.dead_letter(&job.env, reason, code, now) {
                        // Refused for good, and not even kept: say so.
                        problems.push(format!(
                            "message {} refused at '{ep}' ({code}) could not be dead-lettered: {e}",
                            job.env.id
                        ));
                        *fate = Some(Fate::Refused(code, std::mem::take(reason), None));
                        continue;
                    }
                    match notice::send(&ctx.home, &job.env, ep, code, reason, now) {
                        Ok(n) => notices.extend(n),
                        Err(e) => problems.push(format!("no failure notice sent: {e}")),
                    }
                }
                Some(Fate::Refused(code, reason, _)) if any => {
                    match mb.dead_letter(&job.env, reason, *code, now) {
                        Ok(()) => {
                            let (code, reason) = (*code, std::mem::take(reason));
                            *fate = Some(Fate::DeadLettered(code, reason));
                        }
                        Err(e) => problems.push(format!(
                            "the copy refused at '{ep}' could not be dead-lettered: {e}"
                        )),
                    }
                }
                _ => {}
            }
        }
    }

    // Dead letters, notices and I/O failures go to the journal; keys of
    // sends that delivered nothing are released so a retry is not taken
    // for a duplicate.
    for job in jobs.iter().filter(|j| j.result.is_none()) {
        let env = &job.env;
        for (ep, fate) in &job.fates {
            if let Some(Fate::DeadLettered(code, reason)) = fate {
                let row = SentRow {
                    endpoint: ep,
                    envelope: env,
                    failure: Some((*code, reason.as_str())),
                    probe: false,
                };
                out.dead_letter(&row, now);
            }
        }
    }
    let release = unused_keys(jobs);
    for n in &notices {
        notice::record(&mut out, n, now);
    }
    for (j, ep, probe) in &io_failures {
        let from = &jobs[*j].env.from;
        let step = BreakerEvent::Failure { probe: *probe };
        if let Err(e) = reliability::breaker_step(
            &mut slots,
            &mut out,
            &rel.circuit_breaker,
            from,
            ep,
            step,
            now,
        ) {
            problems.push(format!("the breaker {from} -> {ep} was not updated: {e}"));
        }
    }
    // Consumers order by priority only where a copy of other than normal
    // priority may be (`State::prioritized`): marked once it is visible.
    let ranked: BTreeSet<&str> = jobs
        .iter()
        .filter(|j| j.result.is_none() && j.env.priority() != Priority::Normal)
        .flat_map(|j| &j.fates)
        .filter(|(_, f)| matches!(f, Some(Fate::Delivered(..))))
        .map(|(ep, _)| ep.as_str())
        .collect();
    if !ranked.is_empty() {
        match slots.lock() {
            Ok(state) => ranked.iter().for_each(|ep| state.mark_prioritized(ep)),
            Err(e) => problems.push(format!(
                "receivers may not see the priority of this message: {e}"
            )),
        }
    }
    match out
        .commit(&mut slots, ctx.home.root())
        .map(|size| size.max(journal_size))
    {
        Ok(size) if size > ctx.config.journal_max_bytes => {
            // Nothing else may be opening the index (a DorkOS consumer reads
            // the Maildir directly): move the backlog in now, so the journal
            // stays bounded. The messages are delivered whatever happens here.
            if let Err(e) = ctx.store().and_then(Store::ingest) {
                problems.push(format!(
                    "the index journal could not be moved into the index: {e}"
                ));
            }
        }
        Ok(_) => {}
        Err(e) => problems.push(format!(
            "not every index record of this send could be written ({e}); relay doctor --repair brings the index back in line with the mailboxes"
        )),
    }
    if !release.is_empty()
        && let Err(e) = release_keys(ctx, &release)
    {
        problems.push(key_problem(&release, &e));
    }
    let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    for (j, job) in jobs.iter().enumerate() {
        let early = predicted.get(j).copied().flatten();
        dorkos_published(ctx.home.root(), job, early, duration_ms, now);
    }
    if let Some(e) = stop {
        return Err(e);
    }

    for job in jobs.iter_mut() {
        job.warnings.extend(problems.iter().cloned());
        if job.result.is_some() {
            continue;
        }
        let fates = std::mem::take(&mut job.fates)
            .into_iter()
            .filter_map(|(ep, f)| f.map(|f| (ep, f)))
            .collect();
        job.result = Some(Ok(Delivery::Done {
            fates,
            warnings: std::mem::take(&mut job.warnings),
        }));
    }
    Ok(())
}

/// Backpressure, rate limit and breakers, exact across processes: under
/// the mailbox locks and the state lock, which is written back (and let
/// go) before this returns; the mailbox locks are returned, to be held
/// until the last rename. Checks that need the index come first, holding
/// no mailbox lock (a busy index keeps only this send waiting): for
/// idempotency keys, and when a lease at one of the endpoints is past its
/// deadline (then every lock is let go for it, and taken again).
fn admit(
    ctx: &mut Ctx,
    jobs: &mut [Job],
    eps: &BTreeSet<String>,
    rel: &Reliability,
    key_window_ms: u64,
    now: u64,
) -> Result<(Vec<std::fs::File>, Slots, Outbox)> {
    let mut indexed = false;
    if jobs.iter().any(|j| j.key.is_some()) {
        index_checks(ctx, jobs, eps, rel, key_window_ms, now)?;
        indexed = true;
    }
    loop {
        let mut held = lock_mailboxes(ctx, jobs, eps, &rel.backpressure)?;
        let mut slots = Slots::new(ctx.home.root());
        if !indexed && slots.lock()?.get().lease_past_due(eps.iter(), now) {
            slots.release()?;
            drop(held);
            index_checks(ctx, jobs, eps, rel, key_window_ms, now)?;
            indexed = true;
            continue;
        }
        // A disk too full for sends: refused before anything is decided.
        for job in jobs.iter_mut().filter(|j| j.result.is_none()) {
            for (ep, fate) in &mut job.fates {
                if fate.is_none()
                    && let Some(why) = held.full.get(ep.as_str())
                {
                    *fate = Some(Fate::Refused(Code::DiskFull, why.clone(), None));
                }
            }
        }
        let mut out = Outbox::default();
        decide(&mut slots, &mut out, jobs, &mut held.depth, rel, now)?;
        slots.release()?;
        return Ok((held.locks, slots, out));
    }
}

/// DorkOS's index, when there is one beside the home, gets the rows of the
/// copies about to be written and the span of their publish (before any
/// copy is visible, so a DorkOS consumer that takes one at once finds its
/// row). Returns, per job, how many copies those rows and span counted on
/// (`None`: nothing written for it yet).
fn dorkos_rows(
    root: &std::path::Path,
    jobs: &[Job],
    work: &[Work],
    started: std::time::Instant,
    now: u64,
) -> Vec<Option<usize>> {
    let mut predicted = vec![None; jobs.len()];
    if !crate::store::dorkos::present(root) {
        return predicted;
    }
    let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let mut sends: Vec<(usize, crate::store::dorkos::Outcome<'_>)> = Vec::new();
    for (j, _, ep, copy) in work {
        if sends.last().is_none_or(|(k, _)| k != j) {
            let mut out = crate::store::dorkos::Outcome {
                duration_ms,
                ..crate::store::dorkos::Outcome::default()
            };
            for (_, fate) in &jobs[*j].fates {
                if let Some(Fate::DeadLettered(code, reason) | Fate::Refused(code, reason, _)) =
                    fate
                {
                    out.refused.push((*code, reason));
                }
            }
            sends.push((*j, out));
        }
        if let Some((_, out)) = sends.last_mut() {
            out.delivered.push((ep, copy));
        }
    }
    for (j, out) in &sends {
        predicted[*j] = Some(out.delivered.len());
    }
    let sends: Vec<(&Envelope, crate::store::dorkos::Outcome<'_>)> = sends
        .into_iter()
        .map(|(j, out)| (&jobs[j].env, out))
        .collect();
    crate::store::dorkos::delivering(root, &sends, now);
    predicted
}

/// What one job's publish did, for DorkOS's index: its `*` row and span
/// when `dorkos_rows` wrote none for it, or a corrected span when fewer
/// copies than it counted on (`early`) were written.
fn dorkos_published(
    root: &std::path::Path,
    job: &Job,
    early: Option<usize>,
    duration_ms: u64,
    now: u64,
) {
    if !crate::store::dorkos::present(root) {
        return;
    }
    let mut out = crate::store::dorkos::Outcome {
        duration_ms,
        ..crate::store::dorkos::Outcome::default()
    };
    match &job.result {
        None => {}
        Some(Err(Error::Refused { message, .. })) => {
            // Refused whole before anything was written.
            out.rate_limited = Some(message);
            crate::store::dorkos::published(root, &job.env, &out, now);
            return;
        }
        Some(_) => return,
    }
    for (ep, fate) in &job.fates {
        match fate {
            Some(Fate::Delivered(copy, _)) => out.delivered.push((ep, copy)),
            Some(Fate::DeadLettered(code, reason) | Fate::Refused(code, reason, _)) => {
                out.refused.push((*code, reason));
            }
            None => {}
        }
    }
    match early {
        None => crate::store::dorkos::published(root, &job.env, &out, now),
        Some(n) if n != out.delivered.len() => {
            crate::store::dorkos::retraced(root, &job.env, &out, now)
        }
        Some(_) => {}
    }
}

/// (sender, key, id) of every key claimed for a send that delivered nothing.
fn unused_keys(jobs: &[Job]) -> Vec<(String, String, String)> {
    jobs.iter()
        .filter(|j| j.key_claimed)
        .filter(|j| {
            !j.fates
                .iter()
                .any(|(_, f)| matches!(f, Some(Fate::Delivered(..))))
        })
        .filter_map(|j| {
            let k = j.key.as_ref()?;
            Some((j.env.from.clone(), k.clone(), j.env.id.clone()))
        })
        .collect()
}

/// Releases the keys of sends that wrote nothing, before an error ends
/// them: a retry must not be taken for a duplicate.
fn give_back_keys(ctx: &mut Ctx, jobs: &[Job]) {
    let keys = unused_keys(jobs);
    if !keys.is_empty()
        && let Err(e) = release_keys(ctx, &keys)
    {
        output::warn(&key_problem(&keys, &e));
    }
}

/// What to tell the sender when `keys` could not be released.
fn key_problem(keys: &[(String, String, String)], e: &Error) -> String {
    let names: Vec<&str> = keys.iter().map(|(_, k, _)| k.as_str()).collect();
    format!(
        "idempotency key(s) {} not released ({e}): a retry with the same key is taken for a duplicate of a message that was not sent; retry with a new key",
        names.join(", ")
    )
}

/// The checks that need the index, in one transaction: claims past their
/// lease count against their breakers (once per endpoint, before any
/// breaker is asked), and idempotency keys are claimed (a repeat within
/// the window is answered before it can spend a token or a probe).
fn index_checks(
    ctx: &mut Ctx,
    jobs: &mut [Job],
    eps: &BTreeSet<String>,
    rel: &Reliability,
    key_window_ms: u64,
    now: u64,
) -> Result<()> {
    let mut tx = ctx.store()?.begin()?;
    for ep in eps {
        reliability::observe_leases(&mut tx, &rel.circuit_breaker, Some(ep), now)?;
    }
    for job in jobs.iter_mut().filter(|j| j.result.is_none()) {
        let env = &job.env;
        if let Some(k) = &job.key {
            match tx.claim_key(&env.from, k, &env.id, key_window_ms, now)? {
                Some(original) => job.result = Some(Ok(Delivery::Duplicate(original))),
                None => job.key_claimed = true,
            }
        }
    }
    tx.commit()
}

/// Gives back idempotency keys (sender, key, id) of sends that delivered nothing.
fn release_keys(ctx: &mut Ctx, keys: &[(String, String, String)]) -> Result<()> {
    let tx = ctx.store()?.begin()?;
    for (from, k, id) in keys {
        tx.release_key(from, k, id)?;
    }
    tx.commit()
}

/// What a send holds and has found out while it decides.
struct Held {
    /// Every open endpoint's mailbox lock (with backpressure on).
    locks: Vec<std::fs::File>,
    /// Their depths.
    depth: BTreeMap<String, u64>,
    /// Endpoints on a disk too full for a send, with the refusal.
    full: BTreeMap<String, String>,
}

/// With backpressure on: every open endpoint's lock (see `lock_all`) and
/// its depth. Far below every threshold an upper bound on the depth decides
/// as well as an exact count, and costs no directory listing: send cost
/// stays flat as a mailbox fills, until decisions need the exact number.
/// The same `fstatfs` tells whether the disk has room (`reserve::send_room`);
/// without backpressure one `statfs` of the home does.
fn lock_mailboxes(
    ctx: &Ctx,
    jobs: &[Job],
    eps: &BTreeSet<String>,
    cfg: &Backpressure,
) -> Result<Held> {
    let mut held = Held {
        locks: Vec::new(),
        depth: BTreeMap::new(),
        full: BTreeMap::new(),
    };
    if !cfg.enabled {
        let root = ctx.home.root();
        if let Ok(fs) = rustix::fs::statfs(root)
            && let Some(why) = reserve::send_room(&fs, root)
        {
            held.full = eps.iter().map(|ep| (ep.clone(), why.clone())).collect();
        }
        return Ok(held);
    }
    let quiet = policy(cfg).quiet_below();
    // At most this many copies per endpoint join it now.
    let mut adding: BTreeMap<&str, u64> = BTreeMap::new();
    for job in jobs.iter().filter(|j| j.result.is_none()) {
        for (_, ep) in job.open() {
            *adding.entry(ep.as_str()).or_default() += 1;
        }
    }
    let mailboxes: Vec<Mailbox> = eps.iter().map(|ep| Mailbox::at(&ctx.home, ep)).collect();
    held.locks = lock_all(&mailboxes)?;
    for (mb, lock) in mailboxes.iter().zip(&held.locks) {
        let adding = adding.get(mb.name.as_str()).copied().unwrap_or(0);
        let fs = rustix::fs::fstatfs(lock).ok();
        if let Some(why) = fs.as_ref().and_then(|fs| reserve::send_room(fs, mb.dir())) {
            held.full.insert(mb.name.clone(), why);
        }
        let bound = match &fs {
            Some(fs) => mb.depth_bound(fs)?,
            None => None,
        };
        let d = match bound {
            Some(bound) if bound.saturating_add(adding) < quiet => bound,
            _ => mb.depth()?,
        };
        held.depth.insert(mb.name.clone(), d);
    }
    Ok(held)
}

/// Every mailbox's lock, without ever holding one while waiting for
/// another: each is tried without waiting; at the first one busy, all are
/// let go, that one is waited for alone, and the rest tried again. A
/// fan-out never keeps its other endpoints locked while an endpoint's
/// holder is stalled, and two fan-outs cannot deadlock.
pub(crate) fn lock_all(mailboxes: &[Mailbox]) -> Result<Vec<std::fs::File>> {
    let mut busy: Option<usize> = None;
    'again: loop {
        let mut waited = match busy.take() {
            Some(i) => Some((i, mailboxes[i].lock()?)),
            None => None,
        };
        let mut locks = Vec::with_capacity(mailboxes.len());
        for (i, mb) in mailboxes.iter().enumerate() {
            if let Some((w, _)) = &waited
                && *w == i
                && let Some((_, lock)) = waited.take()
            {
                locks.push(lock);
                continue;
            }
            match mb.try_lock()? {
                Some(lock) => locks.push(lock),
                None => {
                    busy = Some(i);
                    continue 'again;
                }
            }
        }
        return Ok(locks);
    }
}

/// Backpressure, rate limit and breakers for every job still open, in
/// the state `slots`, events into `out`. Admitted copies are the fates left
/// open; `depth` reserves their room.
fn decide(
    slots: &mut Slots,
    out: &mut Outbox,
    jobs: &mut [Job],
    depth: &mut BTreeMap<String, u64>,
    rel: &Reliability,
    now: u64,
) -> Result<()> {
    for job in jobs.iter_mut().filter(|j| j.result.is_none()) {
        let mut pressure_events = Vec::new();
        if rel.backpressure.enabled {
            pressure_events = backpressure(job, depth, &rel.backpressure);
        }
        let env = &job.env;
        // A send that writes nothing (every endpoint refused it for now) is
        // not charged a token; one that writes dead letters is, so a
        // runaway sender cannot fill failed/ with budget rejections.
        let writes = job
            .fates
            .iter()
            .any(|(_, f)| matches!(f, None | Some(Fate::DeadLettered(..))));
        let rate = if writes {
            reliability::rate_limit(slots, out, &rel.rate_limit, &env.from, now)?
        } else {
            RateOutcome::Admit
        };
        match rate {
            RateOutcome::Admit => {}
            RateOutcome::Soft(w) => job.warnings.push(w),
            RateOutcome::Hard {
                message,
                retry_after_ms,
            } => {
                // Its key, if claimed, is released after the delivery.
                job.result = Some(Err(Error::Refused {
                    message,
                    retry_after_ms: Some(retry_after_ms),
                }));
                continue;
            }
        }
        for (kind, ep, d, limit) in &pressure_events {
            out.event(
                &StoreEvent {
                    kind: *kind,
                    sender: Some(&env.from),
                    endpoint: Some(ep),
                    message_id: Some(&env.id),
                    detail: json!({ "depth": d, "limit": limit, "priority": env.priority().as_str() }),
                },
                now,
            );
        }
        for i in 0..job.fates.len() {
            if job.fates[i].1.is_some() {
                continue;
            }
            let ep = job.fates[i].0.clone();
            let from = &job.env.from;
            let cfg = &rel.circuit_breaker;
            match reliability::breaker_step(slots, out, cfg, from, &ep, BreakerEvent::Send, now)? {
                BreakerDecision::Reject { retry_after_ms } => {
                    let phase = slots.breaker(from, &ep)?.phase;
                    let why = reliability::breaker_refusal(from, &ep, phase, retry_after_ms);
                    job.fates[i].1 =
                        Some(Fate::Refused(Code::CircuitOpen, why, Some(retry_after_ms)));
                }
                BreakerDecision::Probe => job.probes[i] = true,
                BreakerDecision::Admit | BreakerDecision::Noted => {}
            }
        }
        // Reserve the room this message takes for the next jobs' checks.
        for (_, ep) in job.open() {
            if let Some(d) = depth.get_mut(ep) {
                *d += 1;
            }
        }
    }
    Ok(())
}

/// Files a send may have open besides its mailbox locks: stdio, the state
/// slots, the index and its journal, the batch log, and a message file and
/// a directory per delivery thread.
const SPARE_FDS: u64 = 64;
/// Open files every process may have (macOS's default soft limit, the
/// lowest in use): a send needing fewer does not ask.
const FDS_ANYWHERE: u64 = 256;

/// Makes sure this process may hold `n` mailbox locks (one open directory
/// each, for exact depths from the count to the rename) and its other
/// files at once, raising its soft limit up to the hard one if needed.
/// When even the hard limit is too low, the send is refused before
/// anything is written, instead of failing half-way for lack of files.
fn room_for_locks(n: usize) -> Result<()> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let need = u64::try_from(n)
        .unwrap_or(u64::MAX)
        .saturating_add(SPARE_FDS);
    if need <= FDS_ANYWHERE {
        return Ok(());
    }
    let limit = getrlimit(Resource::Nofile);
    // `None` is unlimited.
    let (soft, hard) = (
        limit.current.unwrap_or(u64::MAX),
        limit.maximum.unwrap_or(u64::MAX),
    );
    if need <= soft {
        return Ok(());
    }
    let raised = Rlimit {
        current: Some(need),
        maximum: limit.maximum,
    };
    if need <= hard && setrlimit(Resource::Nofile, raised).is_ok() {
        return Ok(());
    }
    let allowed = if need > hard { hard } else { soft };
    Err(Error::Refused {
        message: format!(
            "a send to {n} endpoints holds all their mailbox locks at once and needs about {need} open files, more than the {allowed} this process may open; nothing was sent: raise the limit (e.g. ulimit -n {}) or send to fewer endpoints at a time",
            need.next_power_of_two()
        ),
        retry_after_ms: None,
    })
}

/// The pure backpressure policy of the configuration.
fn policy(cfg: &Backpressure) -> pressure::Policy {
    pressure::Policy {
        max_mailbox_size: cfg.max_mailbox_size,
        warning_at: cfg.pressure_warning_at,
        shed_low_at: cfg.shed_low_at,
        shed_background_at: cfg.shed_background_at,
        priority_headroom: cfg.priority_headroom,
    }
}

/// Backpressure for one job against the running depths; returns the events
/// to record (kind, endpoint, depth, limit).
fn backpressure(
    job: &mut Job,
    depth: &BTreeMap<String, u64>,
    cfg: &Backpressure,
) -> Vec<(EventKind, String, u64, u64)> {
    let policy = policy(cfg);
    let priority = job.env.priority();
    let mut events = Vec::new();
    for (ep, fate) in &mut job.fates {
        if fate.is_some() {
            continue;
        }
        let d = depth.get(ep).copied().unwrap_or(0);
        match pressure::decide(d, priority, &policy) {
            pressure::Decision::Accept => {}
            pressure::Decision::Warn { depth, limit } => {
                let pct = depth * 100 / policy.max_mailbox_size.max(1);
                job.warnings.push(format!(
                    "mailbox '{ep}' under backpressure: {pct}% full ({depth}/{} messages in new/ and cur/)",
                    policy.max_mailbox_size
                ));
                events.push((EventKind::BackpressureWarning, ep.clone(), depth, limit));
            }
            pressure::Decision::Reject { depth, limit } => {
                let why = if priority == Priority::Normal {
                    format!("mailbox '{ep}' is full ({depth}/{limit} messages in new/ and cur/)")
                } else {
                    format!(
                        "mailbox '{ep}' takes no more {priority}-priority messages at depth {limit} (now {depth}; capacity {})",
                        policy.max_mailbox_size
                    )
                };
                *fate = Some(Fate::Refused(
                    Code::Backpressure,
                    format!("{why}; retry once its consumer catches up"),
                    None,
                ));
                events.push((EventKind::BackpressureRejected, ep.clone(), depth, limit));
            }
        }
    }
    events
}

/// One copy to write: (job, endpoint index, endpoint, envelope).
type Work = (usize, usize, String, Envelope);

/// What became of one copy's delivery (see `Mailbox::deliver`).
type Written = Result<Option<Error>>;

/// Group commit through the batch log: every copy is serialized, appended
/// to the log with one fsync, then delivered without fsync. Serializing and
/// delivering run on two threads. One result per copy, and a problem to
/// report if the failed copies could not be struck from the log; errors
/// returned here (the log could not be written) stop the batch before
/// anything is delivered.
fn logged_commit(
    relay_home: &crate::home::Home,
    log: &mut batchlog::Log,
    work: &[Work],
) -> Result<(Vec<Written>, Option<String>)> {
    let encoded = parallel_map(work, |(_, _, _, copy)| copy.to_file_bytes());
    log.append(
        relay_home,
        work.iter()
            .zip(&encoded)
            .filter_map(|((_, _, ep, copy), b)| {
                Some((ep.as_str(), copy.id.as_str(), b.as_ref().ok()?.as_slice()))
            }),
    )?;
    let todo: Vec<(&Work, Result<Vec<u8>>)> = work.iter().zip(encoded).collect();
    let results = parallel_map(&todo, |((_, _, ep, copy), bytes)| match bytes {
        Ok(b) => Mailbox::at(relay_home, ep).deliver_bytes(&copy.id, b, false),
        Err(e) => Err(Error::Data(e.to_string())),
    });
    // Reported failed, so retried by the sender: not to be replayed.
    let cancelled = log.cancel(
        work.iter()
            .zip(&results)
            .filter(|(_, r)| r.is_err())
            .map(|((_, _, ep, copy), _)| (ep.as_str(), copy.id.as_str())),
    );
    let problem = cancelled.err().map(|e| {
        format!(
            "copies reported failed may come back after a power loss (batch log not updated: {e})"
        )
    });
    Ok((results, problem))
}

/// `f` over `items`, in order, on up to two threads: a batch's file work is
/// mostly system time, which a second core overlaps.
fn parallel_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    const PER_THREAD_MIN: usize = 256;
    // Asking for the core count reads cgroup files: not for a single send.
    if items.len() < 2 * PER_THREAD_MIN
        || std::thread::available_parallelism().map_or(true, |n| n.get() < 2)
    {
        return items.iter().map(&f).collect();
    }
    let (first, second) = items.split_at(items.len() / 2);
    std::thread::scope(|s| {
        let other = s.spawn(|| second.iter().map(&f).collect::<Vec<R>>());
        let mut out: Vec<R> = first.iter().map(&f).collect();
        match other.join() {
            Ok(rest) => out.extend(rest),
            // A panic on the other thread is a bug: raise it here.
            Err(p) => std::panic::resume_unwind(p),
        }
        out
    })
}

#[cfg(test)]
mod tests {
    use super::parallel_map;

    #[test]
    fn parallel_map_keeps_the_input_order() {
        for n in [0, 1, 511, 512, 2_001] {
            let items: Vec<usize> = (0..n).collect();
            let got = parallel_map(&items, |i| i * 3);
            let want: Vec<usize> = items.iter().map(|i| i * 3).collect();
            assert_eq!(got, want, "n = {n}");
        }
    }
}
