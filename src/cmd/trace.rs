//! `relay trace ID`: every span of the message's trace.

use crate::cli::TraceArgs;
use crate::clock::{human_ms, local_time, parse_iso8601};
use crate::context::Ctx;
use crate::error::{Error, Result};
use crate::output;
use crate::store::reports;

/// The trace of message (or trace) `id` and its spans; `None` if the index
/// has neither (also served by `relay serve`).
pub fn lookup(ctx: &mut Ctx, id: &str) -> Result<Option<(String, Vec<reports::Span>)>> {
    crate::maildir::validate_id(id)?;
    let store = ctx.store()?;
    let Some(trace_id) = store.read(|c| reports::trace_of(c, id))? else {
        return Ok(None);
    };
    let spans = store.read(|c| reports::spans(c, &trace_id))?;
    Ok(Some((trace_id, spans)))
}

/// Runs `relay trace`.
pub fn run(ctx: &mut Ctx, args: &TraceArgs) -> Result<()> {
    let Some((trace_id, spans)) = lookup(ctx, &args.id)? else {
        return Err(Error::NoInput(format!(
            "no message or trace '{}' in the index (pruned by gc, or never sent here)",
            args.id
        )));
    };
    if ctx.json {
        return output::json_line(&serde_json::json!({ "traceId": trace_id, "spans": spans }));
    }
    let gap = |a: &str, b: Option<&String>| -> String {
        match (parse_iso8601(a), b.and_then(|b| parse_iso8601(b))) {
            (Some(a), Some(b)) => format!("+{}", human_ms(b.saturating_sub(a))),
            _ => "-".into(),
        }
    };
    let now = ctx.clock.now_ms();
    let mut t = output::table(&[
        "message",
        "endpoint",
        "status",
        "sent",
        "delivered",
        "processed",
        "error",
    ]);
    for s in &spans {
        t.add_row(vec![
            s.message_id.clone(),
            s.endpoint.clone(),
            s.state.to_string(),
            parse_iso8601(&s.sent_at).map_or_else(|| s.sent_at.clone(), |at| local_time(now, at)),
            gap(&s.sent_at, s.delivered_at.as_ref()),
            s.delivered_at
                .as_deref()
                .map_or_else(|| "-".into(), |d| gap(d, s.processed_at.as_ref())),
            match (&s.code, &s.error_message) {
                (Some(c), Some(m)) => format!("{c}: {m}"),
                (Some(c), None) => c.clone(),
                _ => String::new(),
            },
        ]);
    }
    output::line(&format!("trace {trace_id}"))?;
    output::print_table(&t)
}
