//! Dispatch inboxes, the `relay.inbox.dispatch.<ulid>` endpoints that
//! `relay_send_async` makes for replies: one idle for `TTL_MS` (30 min)
//! without a read or a delivery is removed, unread mail included, as
//! DorkOS's dispatch-inbox sweeper does (`relay/relay-core.ts:642-658`).
//!
//! The time of the last activity is kept on disk, not in the server, so a
//! server started later (the agent's next session) also sweeps what an
//! earlier one left: it is the newest mtime of the mailbox directory and
//! its four subdirectories (a delivery, a claim, an ack changes one), and
//! a read (`relay_inbox`) stamps the mailbox directory with the clock's
//! now (`touch`), as does the making of the inbox. A server sweeps only
//! the dispatch inboxes its identity owns (their `.owner`), never another
//! agent's.

use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::context::Ctx;
use crate::maildir::{Mailbox, SUBDIRS};
use crate::subject::DISPATCH_INBOX_PREFIX;

/// How long a dispatch inbox may stay idle (DorkOS's dispatch TTL).
pub const TTL_MS: u64 = 30 * 60 * 1000;
/// How often a server with calls sweeps at most.
pub const SWEEP_AFTER_CALLS: Duration = Duration::from_secs(60);
/// How often an idle server sweeps (as DorkOS's background jobs).
pub const SWEEP_WHEN_IDLE: Duration = Duration::from_secs(5 * 60);

/// `SWEEP_WHEN_IDLE`, or `RELAY_MCP_IDLE_SWEEP_MS` when set (tests; a
/// period of 0 or one that is not a number is ignored).
#[must_use]
pub fn sweep_when_idle() -> Duration {
    crate::envvars::MCP_IDLE_SWEEP_MS
        .get()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|&ms| ms > 0)
        .map_or(SWEEP_WHEN_IDLE, Duration::from_millis)
}

/// Records activity on dispatch inbox `mb` at `now_ms`: its directory's
/// mtime. Best effort: an inbox whose stamp failed only looks idle sooner.
pub fn touch(mb: &Mailbox, now_ms: u64) {
    let at = SystemTime::UNIX_EPOCH + Duration::from_millis(now_ms);
    if let Err(e) = std::fs::File::open(mb.dir()).and_then(|d| d.set_modified(at)) {
        crate::output::warn(&format!(
            "cannot record the activity of {}: {e}",
            mb.dir().display()
        ));
    }
}

/// The last activity on `mb` (ms since the epoch): the newest mtime of its
/// directory and subdirectories; `None` if none can be read.
fn last_active(mb: &Mailbox) -> Option<u64> {
    let mtime = |p: &Path| {
        std::fs::symlink_metadata(p)
            .and_then(|m| m.modified())
            .ok()
            .map(crate::clock::system_time_ms)
    };
    std::iter::once(mtime(mb.dir()))
        .chain(SUBDIRS.iter().map(|s| mtime(&mb.sub(s))))
        .flatten()
        .max()
}

/// Removes every dispatch inbox `owns` accepts that has been idle for
/// `TTL_MS` at the clock's now; returns their subjects. A failure to
/// remove one is said on stderr and left for the next sweep.
pub fn sweep(ctx: &Ctx, owns: impl Fn(&Mailbox) -> bool) -> Vec<String> {
    let now = ctx.clock.now_ms();
    let Ok(entries) = std::fs::read_dir(ctx.home.mailboxes()) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if !name.starts_with(DISPATCH_INBOX_PREFIX) {
            continue;
        }
        let mb = Mailbox::at(&ctx.home, &name);
        if !mb.is_endpoint() || !owns(&mb) {
            continue;
        }
        let idle = last_active(&mb).is_some_and(|at| now.saturating_sub(at) >= TTL_MS);
        if !idle {
            continue;
        }
        match crate::cmd::endpoints::remove_endpoint(&ctx.home, &name, true) {
            Ok(_) => removed.push(name),
            Err(crate::error::Error::NoEndpoint(_)) => {}
            Err(e) => crate::output::warn(&format!(
                "cannot remove the idle dispatch inbox '{name}': {e}"
            )),
        }
    }
    removed
}
