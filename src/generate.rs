//! Man pages and shell completions, generated from the clap definitions so
//! they never drift from `--help` (a test compares the committed copies).

use std::io;

use clap::CommandFactory;

use crate::cli::Cli;
use crate::config;
use crate::envvars::{self, Scope};
use crate::error::code;

/// The shells whose completion scripts are committed under `completions/`.
pub const SHELLS: [clap_complete::Shell; 3] = [
    clap_complete::Shell::Bash,
    clap_complete::Shell::Zsh,
    clap_complete::Shell::Fish,
];

/// The completion script for `shell`.
#[must_use]
pub fn completion(shell: clap_complete::Shell) -> Vec<u8> {
    let mut cmd = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "relay", &mut out);
    out
}

/// The exit statuses relay uses, with what each means: `relay --help`, the
/// man pages' EXIT STATUS and the README's table all come from here.
pub const EXIT_CODES: &[(u8, &str)] = &[
    (code::OK, "ok (also with warnings)"),
    (
        code::USAGE,
        "usage error: a bad flag or argument, an unknown config key",
    ),
    (
        code::DATAERR,
        "bad input data: an invalid subject, an oversize or non-UTF-8 payload, an unknown id, a budget rejection at every endpoint",
    ),
    (
        code::NOINPUT,
        "no input: recv found the mailbox empty (after --wait, if given), or send --file does not exist",
    ),
    (
        code::UNAVAILABLE,
        "no endpoint matches (the message is dead-lettered), or the relay home does not exist yet",
    ),
    (code::IOERR, "an I/O or index error, or a full disk"),
    (
        code::TEMPFAIL,
        "a temporary refusal (rate limit, open breaker, backpressure, a busy lock, no reply yet): retry later",
    ),
    (
        code::NOPERM,
        "refused for safety or access: a symlinked or world-writable home, an own file that is a symlink, an access rule",
    ),
    (
        code::CONFIG,
        "an invalid config.json or access-rules.json (the message names the file and the key)",
    ),
    (
        code::INTERRUPTED,
        "interrupted: a consumer stopped at once by a second SIGINT/SIGTERM, a request interrupted",
    ),
];

/// The README's exit-code table (Markdown), as generated.
#[must_use]
pub fn exit_codes_markdown() -> String {
    let mut out = String::from("| code | meaning |\n|---|---|\n");
    for (c, meaning) in EXIT_CODES {
        out.push_str(&format!("| {c} | {meaning} |\n"));
    }
    out
}

/// The codes a subcommand can exit with, beyond 0 and 64 (which all can)
/// and 74/77/78 (which every command that opens the home can).
fn codes_of(sub: &str) -> &'static [u8] {
    match sub {
        "send" => &[65, 66, 69, 75],
        "recv" => &[65, 66, 69, 75, 130],
        "request" => &[65, 69, 75, 77, 130],
        "ack" | "nack" | "peek" | "trace" | "dlq" => &[65, 69, 75],
        "endpoints" | "status" | "metrics" | "events" | "limits" | "breakers" | "doctor" | "gc"
        | "config" => &[65, 69, 75],
        "serve" | "bridge" => &[69, 75],
        _ => &[],
    }
}

/// `relay --help`'s table after the command list.
fn exit_help(codes: &[u8]) -> String {
    let mut out = String::from("Exit status:\n");
    for (c, meaning) in EXIT_CODES.iter().filter(|(c, _)| codes.contains(c)) {
        out.push_str(&format!("  {c:>3}  {meaning}\n"));
    }
    let names: Vec<&str> = envvars::ALL.iter().take(3).map(|v| v.name).collect();
    out.push_str(&format!(
        "\nEnvironment: {}, ... (see `relay man`)",
        names.join(", ")
    ));
    out
}

/// Every code relay uses.
fn all_codes() -> Vec<u8> {
    EXIT_CODES.iter().map(|(c, _)| *c).collect()
}

/// The codes `sub` documents in its long help.
fn sub_codes(sub: &str) -> Vec<u8> {
    let mut codes = vec![code::OK, code::USAGE];
    codes.extend_from_slice(codes_of(sub));
    if !matches!(sub, "completions" | "man") {
        codes.extend([code::IOERR, code::NOPERM, code::CONFIG]);
    }
    codes.sort_unstable();
    codes.dedup();
    codes
}

/// The command line as parsed and as `--help` prints it: the clap
/// definitions plus the exit-code tables (after the command list, and in
/// each subcommand's long help).
#[must_use]
pub fn command() -> clap::Command {
    let mut cmd = Cli::command().after_help(exit_help(&all_codes()));
    let names: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_string())
        .collect();
    for name in names {
        let help = exit_help(&sub_codes(&name));
        cmd = cmd.mut_subcommand(&name, |s| s.after_long_help(help));
    }
    cmd
}

/// Parses `args` with [`command`]. The exit-code tables only show in help
/// and errors, and adding them costs more than the parse: a command line
/// that parses is parsed without them, anything else again with them.
pub fn parse(args: &[std::ffi::OsString]) -> Result<Cli, clap::Error> {
    use clap::FromArgMatches;
    let parse = |mut cmd: clap::Command| {
        let mut m = cmd.try_get_matches_from_mut(args)?;
        Cli::from_arg_matches_mut(&mut m).map_err(|e| e.format(&mut cmd))
    };
    parse(Cli::command()).or_else(|_| parse(command()))
}

/// Escapes `text` for roff: backslashes, and a leading `.` or `'`.
fn roff(text: &str) -> String {
    let t = text.replace('\\', "\\e").replace('-', "\\-");
    if t.starts_with('.') || t.starts_with('\'') {
        format!("\\&{t}")
    } else {
        t
    }
}

/// A `.TP` list: a bold tag, then its text.
fn tagged(out: &mut String, tag: &str, text: &str) {
    out.push_str(&format!(".TP\n\\fB{}\\fR\n{}\n", roff(tag), roff(text)));
}

/// Example command lines per page (`""` is relay.1).
fn examples(page: &str) -> &'static [(&'static str, &'static str)] {
    match page {
        "" => &[
            ("relay endpoints add agent.backend", "create a mailbox"),
            (
                "id=$(relay send agent.backend '{\"text\":\"CI is green\"}' --from hook.ci)",
                "send; prints the message id",
            ),
            (
                "relay recv agent.backend --json",
                "claim the oldest message and print its envelope",
            ),
            ("relay ack agent.backend \"$id\"", "done with it"),
            (
                "relay recv agent.backend --follow --exec ./handle.sh",
                "a consumer: exit 0 acks, anything else nacks",
            ),
            ("relay status", "the whole bus on one screen"),
        ],
        "send" => &[
            (
                "relay send agent.backend '{\"task\":\"lint\"}' --from hook.ci",
                "prints the id",
            ),
            (
                "echo '{\"report\":1}' | relay send 'agent.*' --ttl 5m",
                "fan-out, payload on stdin",
            ),
            (
                "relay send --batch < requests.ndjson",
                "one line per input line: the id or the error",
            ),
        ],
        "recv" => &[
            ("relay recv agent.backend --wait 10s", "wait for a message"),
            (
                "relay recv agent.backend -n 10 --format '{id} {payload}'",
                "claim up to 10",
            ),
            (
                "relay recv agent.backend --follow --exec 'cat >> log.ndjson'",
                "a consumer",
            ),
        ],
        "request" => &[(
            "relay request agent.backend '{\"question\":\"status?\"}' --timeout 10s",
            "send and wait for the reply",
        )],
        "nack" => &[(
            "relay nack agent.backend 01M8X8CDRHD9G9TW29WH5PBGTY --reason 'tool crashed'",
            "dead-letter a claimed message",
        )],
        "dlq" => &[
            ("relay dlq", "list dead letters"),
            (
                "relay dlq requeue --all --endpoint agent.backend",
                "send them again",
            ),
        ],
        "serve" => &[(
            "relay serve --listen 127.0.0.1:0",
            "any free port; the URL on stdout",
        )],
        _ => &[],
    }
}

/// The sections relay adds to a man page (`page`: `""` for relay.1, else
/// the subcommand; `action`: the page of one of its own subcommands, as
/// relay-config-validate.1, which has its command's exit statuses and
/// environment): EXIT STATUS, CONFIGURATION (relay.1, relay-config.1),
/// ENVIRONMENT, FILES (relay.1), EXAMPLES.
fn extra_sections(page: &str, action: bool) -> String {
    let mut out = String::from(".SH \"EXIT STATUS\"\n");
    let codes = if page.is_empty() {
        all_codes()
    } else {
        sub_codes(page)
    };
    for (c, meaning) in EXIT_CODES.iter().filter(|(c, _)| codes.contains(c)) {
        tagged(&mut out, &c.to_string(), meaning);
    }
    if !action && (page.is_empty() || page == "config") {
        configuration(&mut out);
    }
    out.push_str(".SH ENVIRONMENT\n");
    for v in envvars::ALL.iter().filter(|v| v.scope != Scope::Suite) {
        let relevant = page.is_empty()
            || v.name == envvars::HOME.name
            || v.name == envvars::LOCK_TIMEOUT_MS.name
            || match page {
                "send" | "request" => [
                    envvars::FROM.name,
                    envvars::TRACE_ID.name,
                    envvars::BUDGET.name,
                ]
                .contains(&v.name),
                "recv" => v.scope == Scope::Handler,
                "serve" => v.name == envvars::SERVE_TOKEN.name,
                "bridge" => v.name == envvars::NATS_URL.name,
                _ => false,
            };
        if !relevant {
            continue;
        }
        let mut text = v.meaning.to_string();
        match v.scope {
            Scope::Handler => text.push_str(" Set for each --exec handler."),
            Scope::Testing => text.push_str(" For tests."),
            _ => {}
        }
        if v.default != "-" {
            text.push_str(&format!(" Default: {}.", v.default));
        }
        tagged(&mut out, v.name, &text);
    }
    if page.is_empty() {
        out.push_str(".SH FILES\n");
        for (path, what) in FILES {
            tagged(&mut out, path, what);
        }
    }
    let ex = if action { &[] } else { examples(page) };
    if !ex.is_empty() {
        out.push_str(".SH EXAMPLES\n");
        for (line, what) in ex {
            out.push_str(&format!(
                ".PP\n{}\n.RS\n.nf\n{}\n.fi\n.RE\n",
                roff(what),
                roff(line)
            ));
        }
    }
    out
}

/// The CONFIGURATION section (relay.1 and relay-config.1): every knob of
/// config.json, from its one declaration in `crate::config`.
fn configuration(out: &mut String) {
    out.push_str(".SH CONFIGURATION\n.PP\n");
    out.push_str(&roff(
        "$RELAY_HOME/config.json is read by every command; every key is optional. \
         A dotted key names nested objects: reliability.rateLimit.maxPerWindow is \
         {\"reliability\": {\"rateLimit\": {\"maxPerWindow\": N}}}, and relay config get and set \
         take it as written. An invalid value exits 78 naming the file and the key; \
         an unknown key is a warning. A DorkOS key accepts what DorkOS's schema accepts: \
         an integer up to 9007199254740991 above relay's ceiling is taken as the ceiling, \
         with a warning.",
    ));
    out.push('\n');
    for d in config::docs() {
        let origin = if d.dorkos { " DorkOS's key." } else { "" };
        let text = format!(
            "{} Accepts {}; default {}.{origin}",
            d.about, d.accepts, d.default
        );
        tagged(out, d.key, &text.replace('`', ""));
    }
}

/// The relay home's files (relay.1's FILES).
const FILES: &[(&str, &str)] = &[
    (
        "$RELAY_HOME",
        "the relay home (--home, else $RELAY_HOME, else ~/.dork/relay), 0700",
    ),
    (
        "$RELAY_HOME/config.json",
        "optional configuration (relay config)",
    ),
    (
        "$RELAY_HOME/access-rules.json",
        "optional access rules (DorkOS's shape); unreadable rules deny every send",
    ),
    (
        "$RELAY_HOME/mailboxes/SUBJECT/{tmp,new,cur,failed}/ULID.json",
        "the Maildir: one file per message; failed/ holds dead letters and their .reason.json",
    ),
    (
        "$RELAY_HOME/relay.db",
        "the SQLite index (WAL): message rows, events, traces",
    ),
    (
        "$RELAY_HOME/journal",
        "index rows and events of sends not yet moved into relay.db",
    ),
    (
        "$RELAY_HOME/state.0, state.1",
        "token buckets, circuit breakers, lease deadlines (two slots)",
    ),
    (
        "$RELAY_HOME/batches/ULID.log",
        "durable batches' messages until they are on disk",
    ),
    (
        "$RELAY_HOME/reserve",
        "512 KiB kept for the index on a full disk",
    ),
    ("$RELAY_HOME/locks/", "lock files"),
];

/// Renders `cmd` as a man page with relay's sections before VERSION.
fn render(cmd: clap::Command, page: &str, action: bool) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    // No `help` pseudo-command among the SUBCOMMANDS: it has no page
    // (`--help` is on every one), and each entry there names a page.
    clap_mangen::Man::new(cmd.disable_help_subcommand(true)).render(&mut out)?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let extra = extra_sections(page, action);
    let text = match text.find("\n.SH VERSION") {
        Some(i) => format!("{}\n{extra}{}", &text[..i], &text[i + 1..]),
        None => format!("{text}{extra}"),
    };
    Ok(text.into_bytes())
}

/// Every man page: `relay.1`, then `relay-SUBCOMMAND.1` for each
/// subcommand and `relay-SUBCOMMAND-ACTION.1` for each of its own
/// (`relay-config-validate.1`): every page a SUBCOMMANDS section names.
pub fn man_pages() -> io::Result<Vec<(String, Vec<u8>)>> {
    // clap's own sections from the plain definitions: the exit codes are
    // relay's EXIT STATUS section, not clap's EXTRA.
    let cmd = Cli::command();
    let mut pages = vec![("relay.1".to_string(), render(cmd.clone(), "", false)?)];
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        actions(
            sub,
            sub.get_name(),
            &format!("relay-{}", sub.get_name()),
            false,
            &mut pages,
        )?;
    }
    Ok(pages)
}

/// The page `name` of `cmd` (of command `page`), then those of its own
/// subcommands, at any depth.
fn actions(
    cmd: &clap::Command,
    page: &str,
    name: &str,
    action: bool,
    pages: &mut Vec<(String, Vec<u8>)>,
) -> io::Result<()> {
    pages.push((
        format!("{name}.1"),
        render(cmd.clone().name(name.to_string()), page, action)?,
    ));
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        actions(
            sub,
            page,
            &format!("{name}-{}", sub.get_name()),
            true,
            pages,
        )?;
    }
    Ok(())
}
