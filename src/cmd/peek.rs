//! `relay peek`: list an endpoint's messages without claiming them (see
//! `inbox`). Read-only: it does not even create a home that is missing.

use std::path::PathBuf;

use crate::cli::PeekArgs;
use crate::clock::{Clock, ago, human_ms, parse_iso8601};
use crate::config;
use crate::error::{Error, Result};
use crate::home::{self, Home};
use crate::inbox::{self, Listing, Peeked, State};
use crate::output;

/// Runs `relay peek`: a table, or with `--json` one JSON line per message.
pub fn run(home: Option<PathBuf>, json: bool, args: &PeekArgs) -> Result<()> {
    let mut home = Home::resolve(home)?;
    if std::fs::symlink_metadata(home.root()).is_err() {
        return Err(Error::NoEndpoint(format!(
            "no endpoint '{}': there is no relay home at {} (pass --home DIR or set RELAY_HOME)",
            args.endpoint,
            home.root().display()
        )));
    }
    home::check_dir(home.root(), "relay home")?;
    let config = config::load(&home.config_file())?;
    home.set_payload_cap(config.max_payload_bytes);
    for w in &config.warnings {
        output::warn(w);
    }
    let listing = inbox::peek(&home, &args.endpoint, args.status, args.count as usize)?;
    if json {
        let lines: Vec<String> = listing
            .messages
            .iter()
            .map(|p| p.to_json().to_string())
            .collect();
        if !lines.is_empty() {
            output::line(&lines.join("\n"))?;
        }
    } else {
        table(&listing, args.status_word(), Clock::from_env().now_ms())?;
    }
    let shown = listing.messages.len();
    if shown < listing.total {
        let note = format!(
            "showing {shown} of {} {}message(s) of '{}'; -n {} shows them all",
            listing.total,
            args.status_word(),
            listing.endpoint,
            listing.total
        );
        // Under --json stderr holds JSON lines only: the note is one.
        if json {
            output::warn(&note);
        } else {
            eprintln!("relay: {note}");
        }
    }
    Ok(())
}

impl PeekArgs {
    /// The filter as a word, for messages.
    fn status_word(&self) -> &'static str {
        match self.status {
            inbox::Filter::Pending => "pending ",
            inbox::Filter::Claimed => "claimed ",
            inbox::Filter::Failed => "failed ",
            inbox::Filter::All => "",
        }
    }
}

/// The table for people (an empty mailbox says so on stderr).
fn table(listing: &Listing, status: &str, now: u64) -> Result<()> {
    if listing.messages.is_empty() {
        eprintln!("relay: no {status}messages in '{}'", listing.endpoint);
        return Ok(());
    }
    let mut t = output::table(&[
        "id",
        "status",
        "from",
        "subject",
        "age",
        "deliveries",
        "size",
        "note",
    ]);
    for p in &listing.messages {
        let env = p.envelope.as_ref();
        let age = env
            .and_then(|e| parse_iso8601(&e.created_at))
            .map_or_else(|| "-".to_string(), |at| ago(now, at));
        t.add_row(vec![
            p.id.clone(),
            p.state.to_string(),
            env.map_or_else(|| "-".into(), |e| e.from.clone()),
            env.map_or_else(|| "-".into(), |e| e.subject.clone()),
            age,
            env.map_or_else(|| "-".into(), |e| e.delivery_count.to_string()),
            p.size.to_string(),
            note(p, now),
        ]);
    }
    for i in [5, 6] {
        if let Some(c) = t.column_mut(i) {
            c.set_cell_alignment(comfy_table::CellAlignment::Right);
        }
    }
    output::print_table(&t)
}

/// What else matters about one message: why it failed, when it was
/// claimed, what is wrong with a file that is no envelope.
fn note(p: &Peeked, now: u64) -> String {
    if let Some(problem) = &p.problem {
        return problem.clone();
    }
    match p.state {
        State::Claimed => p
            .claimed_at
            .map(|at| format!("claimed {} ago", human_ms(now.saturating_sub(at))))
            .unwrap_or_default(),
        State::Failed => p.reason.as_ref().map_or_else(
            || "no reason sidecar".into(),
            |r| match &r.code {
                Some(code) => format!("{code}: {}", r.reason),
                None => r.reason.clone(),
            },
        ),
        State::Pending => String::new(),
    }
}
