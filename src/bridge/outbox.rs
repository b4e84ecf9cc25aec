//! The outbox: proxy mailboxes of remote endpoints. A send to a remote
//! endpoint is an ordinary durable delivery into its proxy (bounded by
//! backpressure like any mailbox). The bridge claims what waits there
//! (`new/` -> `cur/`) in order of priority, then age, and removes a copy
//! only once JetStream acknowledged its publish; a copy past its TTL is
//! dead-lettered here with a failure notice instead of being forwarded.

use std::collections::HashMap;

use crate::context::Ctx;
use crate::envelope::Envelope;
use crate::error::Result;
use crate::maildir::Mailbox;
use crate::store::journal::Outbox;
use crate::store::rows::Event;
use crate::vocab::{Code, EventKind};

/// One claimed copy to forward.
#[derive(Debug, Clone)]
pub struct Item {
    /// The remote endpoint.
    pub endpoint: String,
    /// Its host.
    pub host: String,
    /// The copy as it lies in the proxy.
    pub envelope: Envelope,
    /// Its file bytes (the DorkOS envelope, published unchanged).
    pub bytes: Vec<u8>,
}

/// What one look at the outbox found.
#[derive(Debug, Default)]
pub struct Taken {
    /// Claimed copies, by priority then age.
    pub items: Vec<Item>,
    /// Copies dead-lettered for their TTL.
    pub expired: u64,
}

/// Gives every copy a crashed bridge left claimed back to `new/`: it is
/// published again under the same `Nats-Msg-Id` (JetStream drops the
/// duplicate within its window; the receiving bridge after it).
pub fn recover(ctx: &Ctx) -> Result<usize> {
    let mut n = 0;
    for ep in super::directory::remotes(&ctx.home).keys() {
        let mb = Mailbox::at(&ctx.home, ep);
        if !mb.is_endpoint() {
            continue;
        }
        for id in mb.list("cur")? {
            if mb.unclaim(&id)? {
                n += 1;
            }
        }
    }
    Ok(n)
}

/// How many copies wait in the outbox (`new/` and `cur/` of every proxy).
pub fn queued(ctx: &Ctx) -> Result<u64> {
    let mut n = 0u64;
    for ep in super::directory::remotes(&ctx.home).keys() {
        let mb = Mailbox::at(&ctx.home, ep);
        if mb.is_endpoint() {
            n += mb.depth()?;
        }
    }
    Ok(n)
}

/// The `new/` directories of the proxies, where sends to remote endpoints land.
#[must_use]
pub fn arrivals(home: &crate::home::Home) -> std::collections::BTreeSet<std::path::PathBuf> {
    super::directory::remotes(home)
        .keys()
        .map(|ep| Mailbox::at(home, ep).sub("new"))
        .collect()
}

/// Claims up to `max` copies across the proxies, by priority then age;
/// those past their TTL are dead-lettered with a notice instead.
pub fn take(ctx: &mut Ctx, max: usize, now: u64) -> Result<Taken> {
    let remotes = super::directory::remotes(&ctx.home);
    let mut taken = Taken::default();
    let mut expired: Vec<(String, Envelope)> = Vec::new();
    for (ep, host) in &remotes {
        let mb = Mailbox::at(&ctx.home, ep);
        let ids = if mb.is_endpoint() {
            mb.list("new")?
        } else {
            Vec::new()
        };
        if ids.is_empty() {
            continue;
        }
        let ranks: HashMap<String, u8> = ctx
            .store()
            .and_then(|s| s.pending_priorities(ep))
            .unwrap_or_default();
        let mut quarantined = Vec::new();
        let claimed = mb.claim(
            ids,
            max.saturating_sub(taken.items.len()),
            now,
            &ranks,
            &mut quarantined,
        )?;
        for c in claimed {
            let env = c.envelope;
            if now > env.budget.ttl {
                expired.push((ep.clone(), env));
                continue;
            }
            taken.items.push(Item {
                endpoint: ep.clone(),
                host: host.clone(),
                envelope: env,
                bytes: c.bytes,
            });
        }
        if taken.items.len() >= max {
            break;
        }
    }
    taken.items.sort_by(|a, b| {
        (a.envelope.priority().rank(), &a.envelope.id, &a.endpoint).cmp(&(
            b.envelope.priority().rank(),
            &b.envelope.id,
            &b.endpoint,
        ))
    });
    taken.expired = expired.len() as u64;
    if !expired.is_empty() {
        expire(ctx, &expired, now)?;
    }
    Ok(taken)
}

/// While the link is down: dead-letters the copies whose TTL has passed
/// (with failure notices), leaving the others queued; how many.
pub fn expire_due(ctx: &mut Ctx, now: u64) -> Result<u64> {
    let mut due = Vec::new();
    for ep in super::directory::remotes(&ctx.home).keys() {
        let mb = Mailbox::at(&ctx.home, ep);
        if !mb.is_endpoint() {
            continue;
        }
        for id in mb.list("new")? {
            let Some(env) = mb.read_envelope("new", &id) else {
                continue;
            };
            let name = format!("{id}.json");
            if now > env.budget.ttl
                && std::fs::rename(mb.sub("new").join(&name), mb.sub("cur").join(&name)).is_ok()
            {
                due.push((ep.clone(), env));
            }
        }
    }
    if !due.is_empty() {
        expire(ctx, &due, now)?;
    }
    Ok(due.len() as u64)
}

/// Dead-letters claimed copies past their TTL, with failure notices.
fn expire(ctx: &mut Ctx, copies: &[(String, Envelope)], now: u64) -> Result<()> {
    let mut letters = Vec::new();
    for (ep, env) in copies {
        let mb = Mailbox::at(&ctx.home, ep);
        let reason = format!(
            "ttl expired {} ago, before the bridge could forward it to its host",
            crate::clock::human_ms(now.saturating_sub(env.budget.ttl))
        );
        if !mb.fail(
            &env.id,
            serde_json::Value::Null,
            &reason,
            Code::TtlExpired,
            now,
        )? {
            continue;
        }
        letters.push(super::dead::Letter {
            endpoint: ep.clone(),
            envelope: env.clone(),
            reason,
        });
    }
    super::dead::dead_lettered(ctx, &letters, Code::TtlExpired, now)
}

/// Removes forwarded copies (JetStream acknowledged them) from the proxies.
pub fn done(ctx: &mut Ctx, items: &[Item], now: u64) -> Result<()> {
    for it in items {
        Mailbox::at(&ctx.home, &it.endpoint).ack(&it.envelope.id)?;
    }
    let mut out = Outbox::default();
    for it in items {
        out.event(
            &Event {
                kind: EventKind::BridgeForwarded,
                sender: Some(&it.envelope.from),
                endpoint: Some(&it.endpoint),
                message_id: Some(&it.envelope.id),
                detail: serde_json::json!({ "host": it.host }),
            },
            now,
        );
    }
    out.flush(ctx.home.root()).map(|_| ())
}

/// Gives unpublished copies back to `new/` for the next try.
pub fn give_back(ctx: &Ctx, items: &[Item]) -> Result<()> {
    for it in items {
        Mailbox::at(&ctx.home, &it.endpoint).unclaim(&it.envelope.id)?;
    }
    Ok(())
}
