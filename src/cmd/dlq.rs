//! `relay dlq`: the dead-letter queue over every mailbox's `failed/` and its
//! reason sidecars: list, show, requeue, purge.

use std::io::{BufRead, IsTerminal, Write};

use serde::Serialize;
use serde_json::{Value, json};

use crate::cli::{DlqAction, DlqArgs};
use crate::clock::{ago, iso8601, parse_iso8601, system_time_ms};
use crate::context::Ctx;
use crate::envelope::Envelope;
use crate::error::{Error, IoContext, Result};
use crate::maildir::{self, Mailbox};
use crate::output;
use crate::store::rows::Event;
use crate::vocab::EventKind;

/// One dead letter.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    /// The message id.
    pub id: String,
    /// The directory whose `failed/` holds it.
    pub endpoint: String,
    /// Machine-readable cause, from the sidecar.
    pub code: Option<String>,
    /// Why, from the sidecar.
    pub reason: Option<String>,
    /// When (ISO-8601): the sidecar's time, else the file's.
    pub failed_at: Option<String>,
    /// The same in ms (0 if unknown).
    #[serde(skip)]
    pub failed_ms: u64,
    /// The envelope (`failed/<id>.json`), when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub envelope: Option<Value>,
}

/// Runs `relay dlq`.
pub fn run(ctx: &mut Ctx, args: &DlqArgs) -> Result<()> {
    if let Some(e) = &args.endpoint {
        crate::subject::validate_pattern(e, "endpoint")?;
    }
    let endpoint = args.endpoint.as_deref();
    match &args.action {
        None | Some(DlqAction::List) => list(ctx, endpoint),
        Some(DlqAction::Show { id }) => show(ctx, endpoint, id),
        Some(DlqAction::Requeue { ids, all }) => requeue(ctx, endpoint, ids, *all),
        Some(DlqAction::Purge { older_than, yes }) => {
            purge(ctx, endpoint, crate::clock::ms(*older_than), *yes)
        }
    }
}

/// Every dead letter (of `endpoint`, if given), oldest first (also served
/// by `relay serve`).
pub fn collect(ctx: &Ctx, endpoint: Option<&str>, with_envelope: bool) -> Result<Vec<DeadLetter>> {
    gather(ctx, endpoint, None, with_envelope)
}

/// `collect`, limited to id `only` if given: the sidecars and envelopes of
/// other dead letters are not read.
fn gather(
    ctx: &Ctx,
    endpoint: Option<&str>,
    only: Option<&str>,
    with_envelope: bool,
) -> Result<Vec<DeadLetter>> {
    let mut out = Vec::new();
    for name in maildir::mailbox_dir_names(&ctx.home)? {
        if endpoint.is_some_and(|e| e != name) || name.starts_with('.') {
            continue;
        }
        let mb = Mailbox::at(&ctx.home, &name);
        for id in mb.list("failed")? {
            if only.is_some_and(|o| o != id) {
                continue;
            }
            let sidecar = mb.read_reason(&id);
            let failed_ms = failed_ms(&mb, &id, sidecar.as_ref());
            out.push(DeadLetter {
                envelope: with_envelope.then(|| mb.read_json("failed", &id)).flatten(),
                code: sidecar.as_ref().and_then(|r| r.code.clone()),
                reason: sidecar.map(|r| r.reason),
                failed_at: (failed_ms > 0).then(|| iso8601(failed_ms)),
                failed_ms,
                endpoint: name.clone(),
                id,
            });
        }
    }
    out.sort_by(|a, b| (a.failed_ms, &a.id).cmp(&(b.failed_ms, &b.id)));
    Ok(out)
}

/// When dead letter `id` of `mb` failed (ms): its sidecar's time, else its
/// file's, else 0.
fn failed_ms(mb: &Mailbox, id: &str, sidecar: Option<&maildir::Reason>) -> u64 {
    sidecar
        .and_then(|r| parse_iso8601(&r.failed_at))
        .or_else(|| {
            std::fs::metadata(mb.sub("failed").join(format!("{id}.json")))
                .and_then(|m| m.modified())
                .ok()
                .map(system_time_ms)
        })
        .unwrap_or(0)
}

/// Fills in the code and reason of letters without a sidecar from the
/// index (a letter of an older home, which wrote the sidecar after it and
/// crashed between); without an index, they stay unknown.
fn from_index(ctx: &mut Ctx, letters: &mut [DeadLetter]) {
    if letters.iter().all(|d| d.code.is_some()) {
        return;
    }
    let Ok(store) = ctx.store() else {
        return;
    };
    for d in letters.iter_mut().filter(|d| d.code.is_none()) {
        if let Ok(Some((code, reason))) = store.failure(&d.endpoint, &d.id) {
            d.code = Some(code);
            d.reason = d.reason.take().or(reason);
        }
    }
}

fn list(ctx: &mut Ctx, endpoint: Option<&str>) -> Result<()> {
    let mut letters = collect(ctx, endpoint, false)?;
    from_index(ctx, &mut letters);
    if ctx.json {
        return output::json_line(&json!({ "deadLetters": letters }));
    }
    if letters.is_empty() {
        eprintln!("relay: no dead letters");
        return Ok(());
    }
    let now = ctx.clock.now_ms();
    let mut t = output::table(&["id", "endpoint", "code", "reason", "when"]);
    for d in &letters {
        t.add_row(vec![
            d.id.clone(),
            d.endpoint.clone(),
            d.code.clone().unwrap_or_else(|| "-".into()),
            d.reason
                .clone()
                .unwrap_or_else(|| "(no reason sidecar)".into()),
            ago(now, d.failed_ms),
        ]);
    }
    output::print_table(&t)
}

fn find(
    ctx: &Ctx,
    endpoint: Option<&str>,
    id: &str,
    with_envelope: bool,
) -> Result<Vec<DeadLetter>> {
    maildir::validate_id(id)?;
    let found = gather(ctx, endpoint, Some(id), with_envelope)?;
    if found.is_empty() {
        return Err(Error::Data(format!(
            "no dead letter '{id}'{}; list them with: relay dlq",
            endpoint.map(|e| format!(" in '{e}'")).unwrap_or_default()
        )));
    }
    Ok(found)
}

fn show(ctx: &mut Ctx, endpoint: Option<&str>, id: &str) -> Result<()> {
    let mut found = find(ctx, endpoint, id, true)?;
    from_index(ctx, &mut found);
    if ctx.json {
        return output::json_line(&json!({ "deadLetters": found }));
    }
    for d in &found {
        output::line(&output::printable(&format!(
            "{} in {}: {} ({}) at {}",
            d.id,
            d.endpoint,
            d.reason.as_deref().unwrap_or("no reason sidecar"),
            d.code.as_deref().unwrap_or("-"),
            d.failed_at.as_deref().unwrap_or("-")
        )))?;
        let text = serde_json::to_string_pretty(d.envelope.as_ref().unwrap_or(&Value::Null))
            .unwrap_or_default();
        output::line(&text)?;
    }
    Ok(())
}

/// Lifetime given to a requeued letter whose TTL has passed, when the one
/// it was sent with is unknown (the default TTL of a send).
const REQUEUE_TTL_MS: u64 = 3_600_000;

/// Best effort: every letter is requeued or reported with why not; one
/// that cannot be does not stop the others (the exit code is then the
/// first failure's). Each mailbox's letters move under its lock.
impl DeadLetter {
    /// The message id.
    #[must_use]
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The mailbox whose `failed/` holds it.
    #[must_use]
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The envelope, if collected with it (and readable).
    #[must_use]
    pub fn envelope(&self) -> Option<&Value> {
        self.envelope.as_ref()
    }
}

/// What a requeue did.
pub struct Requeued {
    /// Requeued: endpoint, envelope, and the fresh TTL it got if its own
    /// had passed.
    pub done: Vec<(String, Envelope, Option<u64>)>,
    /// Not requeued: the letters concerned (none for an unknown id) and why.
    pub failed: Vec<(Vec<DeadLetter>, Error)>,
}

fn requeue(ctx: &mut Ctx, endpoint: Option<&str>, ids: &[String], all: bool) -> Result<()> {
    let Requeued { done, failed } = requeue_letters(ctx, endpoint, ids, all)?;
    print_requeued(ctx, &done, &failed)?;
    let not_requeued: usize = failed.iter().map(|(l, _)| l.len().max(1)).sum();
    match failed.first() {
        None => Ok(()),
        Some((_, first)) => Err(Error::Batch {
            code: first.exit_code(),
            message: format!(
                "{not_requeued} dead letter(s) could not be requeued (see above); {} requeued",
                done.len()
            ),
        }),
    }
}

/// Moves dead letters (`ids` of `endpoint`, or with `all` every one of it)
/// back to `new/` of their endpoint, with a fresh TTL if theirs had passed,
/// and records it (also used by the MCP server's `relay_dead_letters`).
pub fn requeue_letters(
    ctx: &mut Ctx,
    endpoint: Option<&str>,
    ids: &[String],
    all: bool,
) -> Result<Requeued> {
    // Batch logs are settled before any file moves (a replay after a
    // restart must not run beside the moves).
    ctx.store()?;
    // Each failure: the letters it concerns (none for an unknown id) and
    // the error, with its own kind and exit code.
    let mut failed: Vec<(Vec<DeadLetter>, Error)> = Vec::new();
    let targets: Vec<DeadLetter> = if all {
        collect(ctx, endpoint, false)?
    } else {
        let mut v = Vec::new();
        for id in ids {
            match find(ctx, endpoint, id, false) {
                Ok(found) => v.extend(found),
                Err(e) => failed.push((Vec::new(), e)),
            }
        }
        v
    };
    let mut by_mailbox: std::collections::BTreeMap<String, Vec<DeadLetter>> =
        std::collections::BTreeMap::new();
    for d in targets {
        by_mailbox.entry(d.endpoint.clone()).or_default().push(d);
    }
    let now = ctx.clock.now_ms();
    let total: usize = by_mailbox.values().map(Vec::len).sum();
    let mut done: Vec<(String, Envelope, Option<u64>)> = Vec::new();
    let mut progress = output::Progress::new("requeue");
    for (name, letters) in by_mailbox {
        let target = requeue_target(ctx, &name).and_then(|mb| Ok((mb.lock()?, mb)));
        let (_lock, mb) = match target {
            Ok(t) => t,
            Err(e) => {
                failed.push((letters, e));
                continue;
            }
        };
        for (n, d) in letters.into_iter().enumerate() {
            match requeue_one(&mb, &d.id, now) {
                Ok(Some((env, fresh))) => done.push((name.clone(), env, fresh)),
                Ok(None) => {} // requeued or purged by someone else meanwhile
                Err(e) => failed.push((vec![d], e)),
            }
            progress.tick(n + 1, Some(total));
        }
    }
    progress.finish();
    if !done.is_empty() {
        let mut tx = ctx.store()?.begin()?;
        for (ep, env, fresh) in &done {
            tx.record_requeued(ep, env)?;
            let detail = match fresh {
                Some(ttl) => json!({ "freshTtl": ttl }),
                None => json!({}),
            };
            tx.event(
                &Event {
                    kind: EventKind::Requeued,
                    sender: Some(&env.from),
                    endpoint: Some(ep),
                    message_id: Some(&env.id),
                    detail,
                },
                now,
            )?;
        }
        tx.commit()?;
    }
    Ok(Requeued { done, failed })
}

/// The report of a requeue: JSON, or lines for people.
#[allow(clippy::type_complexity)]
fn print_requeued(
    ctx: &Ctx,
    done: &[(String, Envelope, Option<u64>)],
    failed: &[(Vec<DeadLetter>, Error)],
) -> Result<()> {
    let now = ctx.clock.now_ms();
    if ctx.json {
        let names: Vec<Value> = done
            .iter()
            .map(|(ep, env, fresh)| {
                let mut v = json!({ "id": env.id, "endpoint": ep });
                if let Some(ttl) = fresh {
                    v["freshTtl"] = json!(iso8601(*ttl));
                }
                v
            })
            .collect();
        let errors: Vec<Value> = failed
            .iter()
            .flat_map(|(letters, e)| {
                let one = |d: Option<&DeadLetter>| {
                    json!({
                        "id": d.map(|d| d.id.clone()),
                        "endpoint": d.map(|d| d.endpoint.clone()),
                        "kind": e.kind(),
                        "message": e.to_string(),
                    })
                };
                if letters.is_empty() {
                    vec![one(None)]
                } else {
                    letters.iter().map(|d| one(Some(d))).collect()
                }
            })
            .collect();
        output::json_line(&json!({ "requeued": names, "failed": errors }))?;
    } else {
        for (letters, e) in failed {
            let what = match letters.as_slice() {
                [] => e.to_string(),
                [d, ..] => format!(
                    "cannot requeue {} of '{}': {e}",
                    letters
                        .iter()
                        .map(|d| d.id.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    d.endpoint
                ),
            };
            eprintln!("relay: {}", output::printable(&what));
        }
        for (ep, env, fresh) in done {
            if let Some(ttl) = fresh {
                eprintln!(
                    "relay: {} of '{ep}' had expired; requeued with a fresh TTL (until {})",
                    env.id,
                    crate::clock::moment(now, *ttl)
                );
            }
        }
        eprintln!("relay: requeued {} message(s)", done.len());
    }
    Ok(())
}

/// The mailbox a dead letter of directory `name` is requeued into: only a
/// registered endpoint with a literal name, which receivers read. A
/// directory named after a pattern (where a publish that matched nothing
/// was dead-lettered) is read by nobody, even with a `new/`.
fn requeue_target(ctx: &Ctx, name: &str) -> Result<Mailbox> {
    if crate::subject::is_pattern(name)
        || crate::subject::validate_subject(name, "endpoint").is_err()
    {
        return Err(Error::NoEndpoint(format!(
            "'{name}' is not an endpoint but the dead-letter directory of a publish that matched nothing, and nothing reads messages there; it stays in failed/: see it with relay dlq show ID, then send it again to an endpoint (relay send SUBJECT PAYLOAD)"
        )));
    }
    let mb = Mailbox::at(&ctx.home, name);
    if !mb.is_endpoint() {
        return Err(Error::NoEndpoint(format!(
            "'{name}' is not an endpoint (dead-lettered because nothing matched); create it first with: relay endpoints add {name}"
        )));
    }
    mb.check()?;
    Ok(mb)
}

/// Requeues one letter of `mb` (whose lock the caller holds), its
/// `deliveryCount` reset; with the fresh TTL it was given if its own had
/// passed. `None` when it is no longer in `failed/`.
fn requeue_one(mb: &Mailbox, id: &str, now: u64) -> Result<Option<(Envelope, Option<u64>)>> {
    let Some(mut env) = mb.read_envelope("failed", id) else {
        if !mb.has("failed", id) {
            return Ok(None);
        }
        return Err(Error::Data(format!(
            "the file is not a valid envelope (see: relay dlq show {id})"
        )));
    };
    if mb.has("new", id) || mb.has("cur", id) {
        return Err(Error::Data(
            "a message with that id is already in new/ or cur/".into(),
        ));
    }
    // A letter past its TTL would expire again at once: it gets the
    // lifetime it was sent with, from now.
    let fresh = (env.budget.ttl <= now).then(|| {
        let lifetime = parse_iso8601(&env.created_at)
            .and_then(|sent| env.budget.ttl.checked_sub(sent))
            .filter(|&ms| ms > 0)
            .unwrap_or(REQUEUE_TTL_MS);
        now.saturating_add(lifetime)
    });
    if let Some(ttl) = fresh {
        env.budget.ttl = ttl;
    }
    // A letter dead-lettered for max_deliveries would be dead-lettered
    // again at its next lease to run out: it starts counting from 0 (the
    // field dropped).
    let recounted = env.delivery_count > 0;
    env.delivery_count = 0;
    let rewritten = (fresh.is_some() || recounted).then_some(&env);
    Ok(mb.requeue(id, rewritten)?.map(|env| (env, fresh)))
}

fn purge(ctx: &mut Ctx, endpoint: Option<&str>, older_ms: u64, yes: bool) -> Result<()> {
    let now = ctx.clock.now_ms();
    let cutoff = now.saturating_sub(older_ms);
    let old: Vec<DeadLetter> = collect(ctx, endpoint, false)?
        .into_iter()
        .filter(|d| d.failed_ms < cutoff)
        .collect();
    if !old.is_empty() && !yes {
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return Err(Error::Usage(format!(
                "refusing to delete {} dead letter(s) without confirmation; pass --yes",
                old.len()
            )));
        }
        eprint!(
            "relay: delete {} dead letter(s) older than {}? [y/N] ",
            old.len(),
            crate::clock::human_ms(older_ms)
        );
        let _ = std::io::stderr().flush();
        let mut answer = String::new();
        stdin.lock().read_line(&mut answer).map_err(|e| Error::Io {
            what: "cannot read the answer".into(),
            source: e,
        })?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            eprintln!("relay: nothing deleted");
            return Ok(());
        }
    }
    let pairs: Vec<(String, String)> = old
        .iter()
        .map(|d| (d.endpoint.clone(), d.id.clone()))
        .collect();
    // Looked at again under the mailbox lock: a letter requeued and
    // dead-lettered again meanwhile is young, and stays.
    let purged = remove_if(
        ctx,
        &pairs,
        endpoint,
        |n| json!({ "count": n, "olderThanMs": older_ms }),
        |mb, id| failed_ms(mb, id, mb.read_reason(id).as_ref()) < cutoff,
    )?;
    if ctx.json {
        return output::json_line(&json!({ "purged": purged }));
    }
    eprintln!("relay: purged {purged} dead letter(s)");
    Ok(())
}

/// Deletes the dead letters `(endpoint, id)` (both files and the index
/// row) with one `dlq_purged` event carrying `detail`, as `relay dlq purge`
/// does (also `relay serve`'s `DELETE /api/relay/dead-letters`). Returns
/// how many it deleted: a letter no longer in `failed/` is left alone.
pub fn remove(
    ctx: &mut Ctx,
    old: &[(String, String)],
    endpoint: Option<&str>,
    detail: Value,
) -> Result<usize> {
    remove_if(ctx, old, endpoint, |_| detail, |_, _| true)
}

/// `remove` of the letters still in `failed/` for which `still` holds,
/// both looked at under the mailbox locks; `detail` is given the count.
fn remove_if(
    ctx: &mut Ctx,
    old: &[(String, String)],
    endpoint: Option<&str>,
    detail: impl FnOnce(usize) -> Value,
    still: impl Fn(&Mailbox, &str) -> bool,
) -> Result<usize> {
    if old.is_empty() {
        return Ok(0);
    }
    let now = ctx.clock.now_ms();
    // A batch log replayed after a power loss could not tell a purged
    // dead letter from a lost message: retire this boot's logs first.
    let home = ctx.home.clone();
    if crate::store::batchlog::settle(&home, ctx.store()?, now, true)? {
        return Err(Error::Refused {
            message: format!(
                "a durable batch is still running (its log is in {}); purge once it has finished",
                home.root().join("batches").display()
            ),
            retry_after_ms: None,
        });
    }
    // Every mailbox lock first (the lock order: before the index; none
    // waited for while another is held), so a requeue, nack or expiry
    // cannot move a letter between the look and the unlink; a busy lock
    // past the lock timeout exits 75 naming it, having deleted nothing.
    let mut names: Vec<&str> = old.iter().map(|(ep, _)| ep.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    // A mailbox removed since the scan took its letters with it.
    let mailboxes: Vec<Mailbox> = names
        .iter()
        .map(|n| Mailbox::at(&ctx.home, n))
        .filter(Mailbox::is_endpoint)
        .collect();
    let locks = crate::pipeline::lock_all(&mailboxes)?;
    let mut gone: Vec<(&str, &str)> = Vec::with_capacity(old.len());
    for (ep, id) in old {
        let mb = Mailbox::at(&ctx.home, ep);
        if !mb.has("failed", id) || !still(&mb, id) {
            continue;
        }
        mb.remove_dead_letter(id)
            .ctx("cannot delete dead letter", &mb.sub("failed"))?;
        gone.push((ep, id));
    }
    drop(locks);
    let tx = ctx.store()?.begin()?;
    for (ep, id) in &gone {
        tx.forget(ep, id)?;
    }
    if !gone.is_empty() {
        tx.event(
            &Event {
                kind: EventKind::DlqPurged,
                sender: None,
                endpoint,
                message_id: None,
                detail: detail(gone.len()),
            },
            now,
        )?;
    }
    tx.commit()?;
    Ok(gone.len())
}
