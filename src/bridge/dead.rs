//! Dead letters in the proxies (a copy past its TTL in the outbox, a copy
//! still queued when its proxy is retired): what follows every dead
//! letter, a failure notice to its sender's `replyTo`, its index row and
//! its `dead_letter` event. A leaf of `bridge`.

use crate::context::Ctx;
use crate::envelope::Envelope;
use crate::error::Result;
use crate::notice;
use crate::store::journal::Outbox;
use crate::vocab::Code;

/// A copy dead-lettered in a proxy (already in its `failed/`).
#[derive(Debug, Clone, PartialEq)]
pub struct Letter {
    /// The remote endpoint (the proxy).
    pub endpoint: String,
    /// The copy.
    pub envelope: Envelope,
    /// Why.
    pub reason: String,
}

/// What follows every dead letter, for copies dead-lettered in the
/// proxies as `code`: a failure notice to each sender's `replyTo` (their
/// sends exited 0, so also for `no_match`), and the index row and
/// `dead_lettered` event of each.
pub fn dead_lettered(ctx: &mut Ctx, letters: &[Letter], code: Code, now: u64) -> Result<()> {
    if letters.is_empty() {
        return Ok(());
    }
    let mut out = Outbox::default();
    for l in letters {
        let (env, ep) = (&l.envelope, &l.endpoint);
        if let Some(sent) = notice::send_accepted(&ctx.home, env, ep, code, &l.reason, now)? {
            notice::record(&mut out, &sent, now);
        }
    }
    out.flush(ctx.home.root())?;
    let tx = ctx.store()?.begin()?;
    for l in letters {
        let env = &l.envelope;
        tx.dead_lettered(Some(&env.from), &l.endpoint, &env.id, code, &l.reason, now)?;
    }
    tx.commit()
}
