//! relay: reliable local messaging over a DorkOS-compatible Maildir protocol.
//!
//! `run` is the whole program: parse, dispatch, and report the one error.

pub mod access;
pub mod breaker;
pub mod bridge;
pub mod bucket;
pub mod census;
pub mod cli;
pub mod clock;
pub mod cmd;
pub mod config;
pub mod consumer;
pub mod context;
pub mod envelope;
pub mod envvars;
pub mod error;
pub mod generate;
pub mod home;
pub mod inbox;
pub mod lease;
pub mod lockwait;
pub mod maildir;
pub mod mcp;
pub mod notice;
pub mod output;
pub mod pipeline;
pub mod pressure;
pub mod reliability;
pub mod request;
pub mod reserve;
pub mod serve;
pub mod store;
pub mod subject;
pub mod template;
pub mod vocab;

use std::ffi::OsString;

use crate::cli::{Cli, Command};
use crate::context::{Ctx, HomeUse};
use crate::error::{Error, code};

/// Runs relay with `args` (including the program name) and returns the
/// process exit code. The only place that prints an error.
pub fn run<I>(args: I) -> u8
where
    I: IntoIterator<Item = OsString>,
{
    let args: Vec<OsString> = args.into_iter().collect();
    let parsed = Cli::parse_hot(&args).unwrap_or_else(|| generate::parse(&args));
    let cli = match parsed {
        Ok(cli) => cli,
        Err(e) => {
            if !e.use_stderr() {
                // Help and version: text on stdout, whatever the flags.
                let _ = e.print();
                return code::OK;
            }
            if wants_json(&args) {
                report(&Error::Usage(usage_message(&e)), true);
            } else {
                let _ = e.print();
            }
            return code::USAGE;
        }
    };
    let json = cli.globals.json;
    output::warnings_as_json(json);
    match dispatch(cli) {
        Ok(()) => code::OK,
        Err(e) if e.is_broken_pipe() => code::OK,
        Err(e) => {
            report(&e, json);
            e.exit_code()
        }
    }
}

/// Whether `--json` is anywhere on a command line clap refused (before a
/// `--`): its usage error must then be JSON too.
fn wants_json(args: &[OsString]) -> bool {
    args.iter()
        .skip(1)
        .take_while(|a| *a != "--")
        .any(|a| a == "--json")
}

/// A clap error as one line: its message and tips, then the usage line,
/// without the `error:` prefix and the "for more information" footer.
fn usage_message(e: &clap::Error) -> String {
    let text = e.render().to_string();
    text.split("\n\n")
        .map(|part| part.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|part| !part.is_empty() && !part.starts_with("For more information"))
        .map(|part| {
            part.strip_prefix("error: ")
                .map_or(part.clone(), str::to_string)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn dispatch(cli: Cli) -> Result<(), Error> {
    // Generated documentation needs no home.
    match &cli.command {
        Command::Completions { shell } => {
            return write_stdout(&generate::completion(*shell));
        }
        Command::Man { out } => return man(out.as_deref()),
        _ => {}
    }
    // A look must not create the home it looks at.
    if let Command::Peek(a) = &cli.command {
        return cmd::peek::run(cli.globals.home, cli.globals.json, a);
    }
    // Flags that do not go together, refused before the home is touched.
    if let Command::Send(a) = &cli.command {
        cmd::send::refuse_flags(a)?;
    }
    // `config` must work while config.json is broken: that is how it is fixed.
    let load_config = !matches!(cli.command, Command::Config(_));
    let mut ctx = Ctx::with(
        cli.globals.home,
        cli.globals.json,
        load_config,
        home_use(&cli.command),
    )?;
    match &cli.command {
        Command::Send(a) => cmd::send::run(&mut ctx, a),
        Command::Recv(a) if a.follow || a.exec.is_some() => cmd::consume::run(&mut ctx, a),
        Command::Recv(a) => cmd::recv::run(&mut ctx, a),
        Command::Request(a) => cmd::request::run(&mut ctx, a),
        Command::Ack(a) => cmd::ack::ack(&mut ctx, a),
        Command::Nack(a) => cmd::ack::nack(&mut ctx, a),
        Command::Endpoints(a) => cmd::endpoints::run(&mut ctx, a),
        Command::Status(a) => cmd::status::run(&mut ctx, a),
        Command::Breakers(a) => cmd::breakers::run(&mut ctx, a),
        Command::Limits(a) => cmd::limits::run(&mut ctx, a),
        Command::Config(a) => cmd::config::run(&ctx, a),
        Command::Trace(a) => cmd::trace::run(&mut ctx, a),
        Command::Metrics(a) => cmd::metrics::run(&mut ctx, a),
        Command::Dlq(a) => cmd::dlq::run(&mut ctx, a),
        Command::Events(a) => cmd::events::run(&mut ctx, a),
        Command::Gc(a) => cmd::gc::run(&mut ctx, a),
        Command::Serve(a) => cmd::serve::run(&ctx, a),
        Command::Mcp(a) => cmd::mcp::run(&ctx, a),
        Command::Doctor(a) => cmd::doctor::run(&mut ctx, a),
        Command::Bridge(a) => cmd::bridge::run(&ctx, a),
        Command::Completions { .. } | Command::Man { .. } | Command::Peek(_) => Ok(()),
    }
}

/// What `command` needs of the home: commands that only look (and those
/// that need an endpoint, which a missing home cannot have) do not create it.
fn home_use(command: &Command) -> HomeUse {
    use crate::cli::{BreakersAction, ConfigAction, DlqAction, EndpointsAction, LimitsAction};
    match command {
        Command::Status(_)
        | Command::Trace(_)
        | Command::Metrics(_)
        | Command::Events(_)
        | Command::Peek(_)
        | Command::Recv(_)
        | Command::Ack(_)
        | Command::Nack(_)
        | Command::Endpoints(cli::EndpointsArgs {
            action: None | Some(EndpointsAction::List | EndpointsAction::Remove { .. }),
        })
        | Command::Limits(cli::LimitsArgs {
            action: None | Some(LimitsAction::List | LimitsAction::Reset { .. }),
        })
        | Command::Breakers(cli::BreakersArgs {
            action: None | Some(BreakersAction::List | BreakersAction::Reset { .. }),
        })
        | Command::Dlq(cli::DlqArgs {
            action: None | Some(DlqAction::List | DlqAction::Show { .. }),
            ..
        }) => HomeUse::Existing,
        Command::Doctor(a) if !a.repair => HomeUse::Existing,
        Command::Gc(a) if a.dry_run => HomeUse::Existing,
        Command::Config(cli::ConfigArgs {
            action:
                None
                | Some(
                    ConfigAction::Show
                    | ConfigAction::Get { .. }
                    | ConfigAction::Path
                    | ConfigAction::Validate { .. },
                ),
        }) => HomeUse::Optional,
        _ => HomeUse::Create,
    }
}

fn write_stdout(bytes: &[u8]) -> Result<(), Error> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .map_err(|e| Error::Io {
            what: "cannot write to stdout".into(),
            source: e,
        })
}

/// `relay man`: the main page on stdout, or every page into `out`.
fn man(out: Option<&std::path::Path>) -> Result<(), Error> {
    use crate::error::IoContext;
    let pages = generate::man_pages().map_err(|e| Error::Io {
        what: "cannot render the man pages".into(),
        source: e,
    })?;
    let Some(dir) = out else {
        return page_or_print(&pages[0].1);
    };
    std::fs::create_dir_all(dir).ctx("cannot create", dir)?;
    for (name, page) in &pages {
        let path = dir.join(name);
        std::fs::write(&path, page).ctx("cannot write", &path)?;
    }
    eprintln!(
        "relay: wrote {} man pages to {}",
        pages.len(),
        dir.display()
    );
    Ok(())
}

/// `relay man` on a terminal: the page through `man -l -` (formatted and
/// paged, as `man -l` would), else through `$PAGER` (or `less`) as roff;
/// anywhere else (a pipe, a file) the roff source on stdout.
fn page_or_print(page: &[u8]) -> Result<(), Error> {
    use std::io::{IsTerminal, Write};
    use std::process::{Command, Stdio};
    if !std::io::stdout().is_terminal() {
        return write_stdout(page);
    }
    let pager = std::env::var("PAGER")
        .ok()
        .filter(|p| !p.trim().is_empty())
        .unwrap_or_else(|| "less".into());
    let mut tries = [Command::new("man"), Command::new("sh")];
    tries[0].args(["-l", "-"]);
    tries[1].arg("-c").arg(&pager);
    for c in &mut tries {
        let Ok(mut child) = c.stdin(Stdio::piped()).spawn() else {
            continue;
        };
        if let Some(mut stdin) = child.stdin.take() {
            // A reader that quit early (q in the pager) is not an error.
            let _ = stdin.write_all(page);
        }
        if child.wait().is_ok_and(|s| s.success()) {
            return Ok(());
        }
    }
    write_stdout(page)
}

/// Prints an error on stderr: `relay: <message>`, or with `--json` one JSON
/// object `{"error": {kind, code, message, retryAfterMs?}}`.
fn report(e: &Error, json: bool) {
    if json {
        let mut obj = serde_json::json!({
            "kind": e.kind(),
            "code": e.exit_code(),
            "message": e.to_string(),
        });
        if let Some(ms) = e.retry_after_ms() {
            obj["retryAfterMs"] = ms.into();
        }
        eprintln!("{}", serde_json::json!({ "error": obj }));
    } else {
        eprintln!("relay: {}", output::printable(&e.to_string()));
    }
}

/// Helpers shared by the unit tests.
#[cfg(test)]
mod testing {
    /// A xorshift64 generator from `seed` (non-zero): the same sequence on
    /// every run, for property tests over random event sequences.
    pub fn xorshift(mut seed: u64) -> impl FnMut() -> u64 {
        move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        }
    }
}
