//! `relay events`: the event log, as a table or NDJSON, optionally followed.

use std::time::Duration;

use crate::cli::EventsArgs;
use crate::clock::{Clock, local_time};
use crate::context::Ctx;
use crate::error::{Error, Result};
use crate::output;
use crate::store::reports;
use crate::store::rows::EventRow;
use crate::vocab::EventKind;

/// Events shown when neither `--since` nor `--follow` narrows them.
const DEFAULT_TAIL: i64 = 50;
/// Pause between two looks at the log while following.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

/// Runs `relay events`.
pub fn run(ctx: &mut Ctx, args: &EventsArgs) -> Result<()> {
    for k in &args.kind {
        if k.parse::<EventKind>().is_err() {
            let known: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
            return Err(Error::Usage(format!(
                "unknown event kind '{k}'; known kinds: {}",
                known.join(", ")
            )));
        }
    }
    let now = ctx.clock.now_ms();
    let since = args
        .since
        .map_or(0, |d| now.saturating_sub(crate::clock::ms(d)));
    let json = ctx.json;
    let store = ctx.store()?;
    let mut last = if args.since.is_some() {
        0
    } else {
        let max = store.read(reports::last_event_id)?;
        max.saturating_sub(if args.follow { 10 } else { DEFAULT_TAIL })
    };
    loop {
        // Sends append to the journal; move what they wrote into the index.
        store.ingest()?;
        let batch = store.read(|c| reports::events_after(c, last, since, &args.kind, 1000))?;
        for e in &batch {
            if json {
                output::json_line(e)?;
            } else {
                // Names and details come from other programs too.
                output::line(&output::printable(&human(e, Clock::from_env().now_ms())))?;
            }
            last = e.id;
        }
        if !args.follow || output::stdout_closed() {
            return Ok(());
        }
        if batch.len() < 1000 {
            std::thread::sleep(FOLLOW_POLL);
        }
    }
}

/// `14:03:11  breaker_opened  agent.a -> agent.b  failures=5 ...` (local
/// time; the date too when it is not today).
fn human(e: &EventRow, now: u64) -> String {
    let who = match (&e.sender, &e.endpoint) {
        (Some(s), Some(p)) => format!("{s} -> {p}"),
        (Some(s), None) => s.clone(),
        (None, Some(p)) => format!("-> {p}"),
        (None, None) => "-".into(),
    };
    let mut line = format!("{}  {:<21}  {who}", local_time(now, e.at), e.kind);
    if let Some(id) = &e.message_id {
        line.push_str("  message=");
        line.push_str(id);
    }
    let detail = output::detail_text(&e.detail, now);
    if !detail.is_empty() {
        line.push_str("  ");
        line.push_str(&detail);
    }
    line
}
