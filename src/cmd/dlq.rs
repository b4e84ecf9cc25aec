//! `relay dlq`: the dead-letter queue over every mailbox's `failed/` and its
//! reason sidecars: list, show, requeue, purge.

use std::io::{BufRead, IsTerminal, Write};

use serde::Serialize;
use serde_json::{Value, json};

use crate::cli::{DlqAction, DlqArgs};
use crate::clock::{ago, iso8601, parse_iso8601, system_time_ms};
use crate::context::Ctx;
use crate::error::{Error, IoContext, Result};
use crate::maildir::{self, Mailbox};
use crate::output;
use crate::store::Event;

/// One dead letter.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    id: String,
    endpoint: String,
    code: Option<String>,
    reason: Option<String>,
    failed_at: Option<String>,
    #[serde(skip)]
    failed_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    envelope: Option<Value>,
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
            let failed_ms = sidecar
                .as_ref()
                .and_then(|r| parse_iso8601(&r.failed_at))
                .or_else(|| {
                    std::fs::metadata(mb.sub("failed").join(format!("{id}.json")))
                        .and_then(|m| m.modified())
                        .ok()
                        .map(system_time_ms)
                })
                .unwrap_or(0);
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

fn list(ctx: &Ctx, endpoint: Option<&str>) -> Result<()> {
    let letters = collect(ctx, endpoint, false)?;
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

fn show(ctx: &Ctx, endpoint: Option<&str>, id: &str) -> Result<()> {
    let found = find(ctx, endpoint, id, true)?;
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

fn requeue(ctx: &mut Ctx, endpoint: Option<&str>, ids: &[String], all: bool) -> Result<()> {
    // Batch logs are settled before any file moves (a replay after a
    // restart must not run beside the moves).
    ctx.store()?;
    let targets: Vec<DeadLetter> = if all {
        collect(ctx, endpoint, false)?
    } else {
        let mut v = Vec::new();
        for id in ids {
            v.extend(find(ctx, endpoint, id, false)?);
        }
        v
    };
    // Check everything first: a requeue that cannot be done writes nothing.
    for d in &targets {
        let mb = Mailbox::at(&ctx.home, &d.endpoint);
        if !mb.is_endpoint() {
            return Err(Error::NoEndpoint(format!(
                "cannot requeue {}: '{}' is not an endpoint (dead-lettered because nothing matched); create it first with: relay endpoints add {}",
                d.id, d.endpoint, d.endpoint
            )));
        }
        crate::home::check_dir(mb.dir(), "mailbox")?;
        if mb.read_envelope("failed", &d.id).is_none() {
            return Err(Error::Data(format!(
                "cannot requeue {} of '{}': the file is not a valid envelope (see: relay dlq show {})",
                d.id, d.endpoint, d.id
            )));
        }
        if mb.has("new", &d.id) || mb.has("cur", &d.id) {
            return Err(Error::Data(format!(
                "cannot requeue {} of '{}': a message with that id is already in new/ or cur/",
                d.id, d.endpoint
            )));
        }
    }
    let now = ctx.clock.now_ms();
    let mut done = Vec::new();
    let mut progress = output::Progress::new("requeue");
    for (n, d) in targets.iter().enumerate() {
        let mb = Mailbox::at(&ctx.home, &d.endpoint);
        if let Some(env) = mb.requeue(&d.id)? {
            done.push((d.endpoint.clone(), env));
        }
        progress.tick(n + 1, Some(targets.len()));
    }
    progress.finish();
    let tx = ctx.store()?.begin()?;
    for (ep, env) in &done {
        tx.record_requeued(ep, env)?;
        tx.event(
            &Event {
                kind: "requeued",
                sender: Some(&env.from),
                endpoint: Some(ep),
                message_id: Some(&env.id),
                detail: json!({}),
            },
            now,
        )?;
    }
    tx.commit()?;
    let names: Vec<Value> = done
        .iter()
        .map(|(ep, env)| json!({ "id": env.id, "endpoint": ep }))
        .collect();
    if ctx.json {
        return output::json_line(&json!({ "requeued": names }));
    }
    eprintln!("relay: requeued {} message(s)", done.len());
    Ok(())
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
    if !old.is_empty() {
        // A batch log replayed after a power loss could not tell a purged
        // dead letter from a lost message: retire this boot's logs first.
        let home = ctx.home.clone();
        if crate::batchlog::settle(&home, ctx.store()?, now, true)? {
            return Err(Error::Refused {
                message: format!(
                    "a durable batch is still running (its log is in {}); purge once it has finished",
                    home.root().join("batches").display()
                ),
                retry_after_ms: None,
            });
        }
    }
    for d in &old {
        let mb = Mailbox::at(&ctx.home, &d.endpoint);
        mb.remove_dead_letter(&d.id)
            .ctx("cannot delete dead letter", &mb.sub("failed"))?;
    }
    let tx = ctx.store()?.begin()?;
    for d in &old {
        tx.forget(&d.endpoint, &d.id)?;
    }
    if !old.is_empty() {
        tx.event(
            &Event {
                kind: "dlq_purged",
                sender: None,
                endpoint,
                message_id: None,
                detail: json!({ "count": old.len(), "olderThanMs": older_ms }),
            },
            now,
        )?;
    }
    tx.commit()?;
    if ctx.json {
        return output::json_line(&json!({ "purged": old.len() }));
    }
    eprintln!("relay: purged {} dead letter(s)", old.len());
    Ok(())
}
