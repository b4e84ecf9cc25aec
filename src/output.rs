//! Rendering for people (comfy-table, warning lines) and programs (JSON).

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};

use comfy_table::{Table, presets};
use serde::Serialize;

use crate::error::{Error, Result};

/// Whether warnings are JSON lines (`--json`): set once the command line is
/// parsed, before anything can warn.
static JSON_WARNINGS: AtomicBool = AtomicBool::new(false);

/// Makes [`warn`] print JSON lines (under `--json`) or text.
pub fn warnings_as_json(json: bool) {
    JSON_WARNINGS.store(json, Ordering::Relaxed);
}

/// Prints a warning on stderr: `relay: warning: <msg>`, or under `--json`
/// one JSON object `{"warning": {"message": <msg>}}`, so a program reading
/// stderr gets one format (errors are `{"error": ...}` lines then).
pub fn warn(msg: &str) {
    eprint!(
        "{}",
        warning_line(msg, JSON_WARNINGS.load(Ordering::Relaxed))
    );
}

/// Prints a notice on stderr, something a long-running command did that is
/// neither a warning nor its output: `relay: <msg>`, or under `--json` one
/// JSON object `{"notice": {"message": <msg>}}`.
pub fn notice(msg: &str) {
    eprint!(
        "{}",
        notice_line(msg, JSON_WARNINGS.load(Ordering::Relaxed))
    );
}

fn notice_line(msg: &str, json: bool) -> String {
    if json {
        format!("{}\n", serde_json::json!({ "notice": { "message": msg } }))
    } else {
        format!("relay: {}\n", printable(msg))
    }
}

/// The line [`warn`] prints, newline included (one write, so lines of
/// concurrent processes sharing a stderr do not interleave).
fn warning_line(msg: &str, json: bool) -> String {
    if json {
        format!("{}\n", serde_json::json!({ "warning": { "message": msg } }))
    } else {
        format!("relay: warning: {}\n", printable(msg))
    }
}

/// `s` with control characters escaped (`\u{1b}`, `\n`), so a value
/// someone else chose cannot drive the terminal.
#[must_use]
pub fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    if s.chars().any(char::is_control) {
        s.chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect::<String>()
            .into()
    } else {
        s.into()
    }
}

/// Writes one line of compact JSON to stdout.
pub fn json_line<T: Serialize + ?Sized>(value: &T) -> Result<()> {
    let text = serde_json::to_string(value)
        .map_err(|e| Error::Data(format!("cannot render JSON output: {e}")))?;
    line(&text)
}

/// Writes `text` and a newline to stdout.
pub fn line(text: &str) -> Result<()> {
    let mut out = io::stdout().lock();
    writeln!(out, "{text}")
        .and_then(|()| out.flush())
        .map_err(|e| Error::Io {
            what: "cannot write to stdout".into(),
            source: e,
        })
}

/// Whether stdout is a pipe or socket whose reader has gone away: lets a
/// follower stop on a quiet bus instead of at its next write.
#[must_use]
pub fn stdout_closed() -> bool {
    use rustix::event::{PollFd, PollFlags, poll};
    let stdout = io::stdout();
    let mut fds = [PollFd::new(&stdout, PollFlags::empty())];
    let zero = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    matches!(poll(&mut fds, Some(&zero)), Ok(n) if n > 0)
        && fds[0]
            .revents()
            .intersects(PollFlags::ERR | PollFlags::HUP | PollFlags::NVAL)
}

/// A progress line for long operations: shown on a terminal's stderr,
/// redrawn at most ten times a second, silent when stderr is piped.
pub struct Progress {
    what: &'static str,
    on: bool,
    last: Option<std::time::Instant>,
}

impl Progress {
    /// Progress of `what` ("gc", "requeue", ...).
    #[must_use]
    pub fn new(what: &'static str) -> Self {
        use std::io::IsTerminal;
        Progress {
            what,
            on: io::stderr().is_terminal(),
            last: None,
        }
    }

    /// Reports `done` items (of `total`, if known).
    pub fn tick(&mut self, done: usize, total: Option<usize>) {
        let due = self
            .last
            .is_none_or(|t| t.elapsed() >= std::time::Duration::from_millis(100));
        if self.on && due {
            let of = total.map(|t| format!("/{t}")).unwrap_or_default();
            eprint!("\rrelay: {}: {done}{of}\x1b[K", self.what);
            self.last = Some(std::time::Instant::now());
        }
    }

    /// Clears the line.
    pub fn finish(&self) {
        if self.on && self.last.is_some() {
            eprint!("\r\x1b[K");
        }
    }
}

/// A table with relay's look: header row, no outer borders, aligned columns.
#[must_use]
pub fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_style(presets::NOTHING);
    t.set_header(header.iter().map(|h| h.to_uppercase()));
    t
}

/// A table's text, each line without the preset's padding at either end.
/// Every cell is escaped (`printable`) before layout: a newline in a name
/// someone else chose shows as `\n` instead of forging a row.
#[must_use]
pub fn table_text(t: &Table) -> String {
    let escaped = |row: &comfy_table::Row| -> comfy_table::Row {
        row.cell_iter()
            .map(|c| printable(&c.content()).into_owned())
            .collect::<Vec<_>>()
            .into()
    };
    let mut t = t.clone();
    if let Some(header) = t.header().map(escaped) {
        t.set_header(header);
    }
    for row in t.row_iter_mut() {
        *row = escaped(row);
    }
    t.to_string()
        .lines()
        .map(|l| printable(l.trim_end().trim_start_matches(' ')).into_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Prints a table to stdout.
pub fn print_table(t: &Table) -> Result<()> {
    line(&table_text(t))
}

/// `key=value` pairs of an event's detail, nulls left out; numbers named
/// `...At` shown as local times, `...Ms` as durations (JSON keeps the ms).
pub fn detail_text(v: &serde_json::Value, now: u64) -> String {
    use serde_json::Value;
    match v.as_object() {
        Some(m) => m
            .iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| match v {
                // Times and durations for people; JSON keeps the numbers.
                Value::Number(n) if k.ends_with("At") && n.as_u64().is_some() => {
                    format!("{k}={}", crate::clock::moment(now, n.as_u64().unwrap_or(0)))
                }
                Value::Number(n) if k.ends_with("Ms") && n.as_u64().is_some() => format!(
                    "{}={}",
                    k.trim_end_matches("Ms"),
                    crate::clock::human_ms(n.as_u64().unwrap_or(0))
                ),
                Value::String(s) => format!("{k}={s}"),
                other => format!("{k}={other}"),
            })
            .collect::<Vec<_>>()
            .join(" "),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warnings_and_notices_are_one_line_of_text_or_json() {
        assert_eq!(warning_line("a\nb", false), "relay: warning: a\\nb\n");
        assert_eq!(
            notice_line("reloaded /x\u{1b}", false),
            "relay: reloaded /x\\u{1b}\n"
        );
        for (line, key) in [
            (warning_line("a\nb", true), "warning"),
            (notice_line("a\nb", true), "notice"),
        ] {
            assert_eq!(line.matches('\n').count(), 1, "{line}");
            let v: serde_json::Value = serde_json::from_str(&line).expect("JSON");
            assert_eq!(v[key]["message"], "a\nb", "{v}");
        }
    }
}
