//! README.md's `sh` blocks, run as written, so its examples cannot drift
//! from relay (issue 16).
//!
//! Every block fenced ```` ```sh ```` runs, in document order, as a `bash`
//! script under `set -euo pipefail`, each in a world of its own: a relay
//! home that does not exist yet as `RELAY_HOME`, an empty working directory,
//! a private `HOME`, and the built `relay` first on `PATH`. A block passes
//! when it exits 0, so every command in it must succeed unless the block
//! says otherwise (`cmd || echo "exit $?: ..."` shows a refusal and goes
//! on). Conventions, as comment lines inside a block (harmless when pasted
//! into a shell):
//!
//! - `# expect-exit: N`: the block must exit with status N instead of 0
//!   (under `set -e` the first failing command ends it: put that one last).
//! - `# needs: TOOL...`: the block needs each TOOL on `PATH`; without one it
//!   is skipped with a `SKIPPED` line on stderr, and under `CI=1` the test
//!   fails instead (`.ci/run` installs what the blocks need).
//!
//! Background jobs (`cmd &`) are killed with the block's process group
//! (SIGTERM, then SIGKILL) once it ends; a block still running after
//! [`BLOCK_TIMEOUT`] fails.
//!
//! A block fenced ```` ```sh norun ```` is not run: for what cannot run
//! here (it builds relay itself, needs a second host or the network, or
//! runs forever). Keep them few: each run lists them on stderr, and more
//! than [`MAX_NORUN`] fail the test. Output samples are fenced `text`,
//! config files `json` or `ini`; `bash`, `shell`, `console` and `zsh`
//! fences are refused, since they look runnable and would not be run.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process_group, test_kill_process_group};

use crate::harness::{BIN, Relay, skip, which};

/// How long one block may run.
const BLOCK_TIMEOUT: Duration = Duration::from_secs(120);

/// At most this many `sh norun` blocks.
const MAX_NORUN: usize = 4;

/// One fenced `sh` block.
#[derive(Debug)]
struct Block {
    /// 1-based line of its opening fence.
    line: usize,
    norun: bool,
    /// The script, with the fence's indentation removed.
    code: String,
}

impl Block {
    /// The status it must exit with (`# expect-exit: N`, default 0).
    fn expected_exit(&self) -> Result<i32, String> {
        let mut expect = 0;
        for l in self.code.lines() {
            if let Some(n) = l.trim().strip_prefix("# expect-exit:") {
                expect = n.trim().parse().map_err(|_| {
                    format!(
                        "line {}: `# expect-exit:` wants a number, got {:?}",
                        self.line,
                        n.trim()
                    )
                })?;
            }
        }
        Ok(expect)
    }

    /// The tools it needs (`# needs: a b`).
    fn needs(&self) -> Vec<String> {
        self.code
            .lines()
            .filter_map(|l| l.trim().strip_prefix("# needs:"))
            .flat_map(|t| t.split_whitespace().map(str::to_string))
            .collect()
    }

    /// Its first command line, to name it in a report.
    fn title(&self) -> String {
        let first = self
            .code
            .lines()
            .find(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
            .unwrap_or_default();
        format!("README.md:{} `{}`", self.line, first.trim())
    }
}

/// Every `sh` block of `md`, in order; an error for a fence that looks
/// runnable but would not be run, or one never closed.
fn blocks(md: &str) -> Result<Vec<Block>, String> {
    let mut out = Vec::new();
    let mut open: Option<(usize, usize, Option<bool>, Vec<&str>)> = None;
    for (i, line) in md.lines().enumerate() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        match &mut open {
            None => {
                let Some(info) = trimmed.strip_prefix("```") else {
                    continue;
                };
                let words: Vec<&str> = info.split_whitespace().collect();
                let kind = match words.as_slice() {
                    ["sh"] => Some(false),
                    ["sh", "norun"] => Some(true),
                    ["sh", ..] => {
                        return Err(format!(
                            "line {}: fence ```{info}: an sh block is ```sh (run by tests/readme.rs) or ```sh norun",
                            i + 1
                        ));
                    }
                    [lang, ..] if ["bash", "shell", "console", "zsh"].contains(lang) => {
                        return Err(format!(
                            "line {}: fence ```{info} would never be run: fence commands ```sh (or ```sh norun), output ```text",
                            i + 1
                        ));
                    }
                    _ => None,
                };
                open = Some((i + 1, indent, kind, Vec::new()));
            }
            Some((start, ind, kind, lines)) => {
                if trimmed.trim_end() == "```" {
                    if let Some(norun) = *kind {
                        let code: String = lines
                            .iter()
                            .map(|l| {
                                let cut = l.len() - l.trim_start().len();
                                format!("{}\n", &l[cut.min(*ind)..])
                            })
                            .collect();
                        out.push(Block {
                            line: *start,
                            norun,
                            code,
                        });
                    }
                    open = None;
                } else {
                    lines.push(line);
                }
            }
        }
    }
    match open {
        Some((start, ..)) => Err(format!("line {start}: a fence is never closed")),
        None => Ok(out),
    }
}

/// What a block did.
struct Ran {
    /// Exit status, or `None` if killed (timeout or signal).
    status: Option<i32>,
    stdout: String,
    stderr: String,
    timed_out: bool,
}

/// Runs `code` as the README test runs a block, in a fresh world.
fn run(code: &str) -> Ran {
    let world = Relay::new();
    let bin = world.scratch().join("bin");
    let work = world.scratch().join("work");
    for dir in [&bin, &work] {
        fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    }
    std::os::unix::fs::symlink(BIN, bin.join("relay"))
        .unwrap_or_else(|e| panic!("cannot link relay into {}: {e}", bin.display()));
    let script = world.scratch().join("block.sh");
    fs::write(&script, format!("set -euo pipefail\n{code}"))
        .unwrap_or_else(|e| panic!("{}: {e}", script.display()));
    let out_path = world.scratch().join("stdout");
    let err_path = world.scratch().join("stderr");
    // Files, not pipes: a background job keeps a pipe open after the block
    // ends.
    let file = |p: &Path| fs::File::create(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let mut path = vec![bin.clone()];
    path.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    let mut c = Command::new("bash");
    world.clean_env(&mut c);
    c.env(
        "PATH",
        std::env::join_paths(path).unwrap_or_else(|e| panic!("PATH: {e}")),
    )
    .args(["--noprofile", "--norc"])
    .arg(&script)
    .current_dir(&work)
    .stdin(Stdio::null())
    .stdout(file(&out_path))
    .stderr(file(&err_path))
    .process_group(0);
    let mut child = c
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start bash: {e}"));
    let group = Pid::from_child(&child);
    let deadline = Instant::now() + BLOCK_TIMEOUT;
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s.code(),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                timed_out = true;
                let _ = kill_process_group(group, Signal::KILL);
                let _ = child.wait();
                break None;
            }
            Err(e) => panic!("cannot wait for bash: {e}"),
        }
    };
    stop_group(group);
    let read = |p: &Path| String::from_utf8_lossy(&fs::read(p).unwrap_or_default()).into_owned();
    Ran {
        status,
        stdout: read(&out_path),
        stderr: read(&err_path),
        timed_out,
    }
}

/// Ends what a block left running in its process group: SIGTERM, then
/// SIGKILL after 10 s; returns once the group is gone.
fn stop_group(group: Pid) {
    if test_kill_process_group(group).is_err() {
        return;
    }
    let _ = kill_process_group(group, Signal::TERM);
    let until = Instant::now() + Duration::from_secs(10);
    while test_kill_process_group(group).is_ok() {
        if Instant::now() > until {
            let _ = kill_process_group(group, Signal::KILL);
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// The end of `s`, at most `max` bytes, for a report.
fn tail(s: &str, max: usize) -> &str {
    let mut cut = s.len().saturating_sub(max);
    while !s.is_char_boundary(cut) {
        cut += 1;
    }
    &s[cut..]
}

/// Runs `block`: `Ok(None)` passed, `Ok(Some(why))` skipped, `Err` failed.
fn check(block: &Block) -> Result<Option<String>, String> {
    let expect = block.expected_exit()?;
    let missing: Vec<String> = block
        .needs()
        .into_iter()
        .filter(|t| which(t).is_none())
        .collect();
    if !missing.is_empty() {
        return Ok(Some(format!("needs {} (not on PATH)", missing.join(", "))));
    }
    let ran = run(&block.code);
    if ran.status == Some(expect) {
        return Ok(None);
    }
    let what = if ran.timed_out {
        format!("still running after {BLOCK_TIMEOUT:?}, killed")
    } else {
        match ran.status {
            Some(s) => format!("exited {s}, expected {expect}"),
            None => "killed by a signal".into(),
        }
    };
    Err(format!(
        "{}: {what}\n--- block\n{}--- stdout (end)\n{}\n--- stderr (end)\n{}",
        block.title(),
        block.code,
        tail(&ran.stdout, 3000),
        tail(&ran.stderr, 3000)
    ))
}

#[test]
fn every_sh_block_of_the_readme_runs_as_written() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("README.md");
    let md = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let all = blocks(&md).unwrap_or_else(|e| panic!("README.md {e}"));
    let norun: Vec<String> = all.iter().filter(|b| b.norun).map(Block::title).collect();
    for t in &norun {
        eprintln!("readme: not run (sh norun): {t}");
    }
    assert!(
        norun.len() <= MAX_NORUN,
        "README.md has {} `sh norun` blocks, more than {MAX_NORUN}: make some runnable (a fresh home, relay on PATH) or fence them `text`:\n{}",
        norun.len(),
        norun.join("\n")
    );
    let runnable: Vec<&Block> = all.iter().filter(|b| !b.norun).collect();
    assert!(runnable.len() >= 8, "README.md lost its examples? {all:?}");
    let mut failures = Vec::new();
    let mut skipped = Vec::new();
    for block in runnable {
        match check(block) {
            Ok(None) => {}
            Ok(Some(why)) => skipped.push(format!("{}: {why}", block.title())),
            Err(e) => failures.push(e),
        }
    }
    assert!(
        failures.is_empty(),
        "{} README block(s) failed (each ran in a fresh home, cwd empty, relay on PATH, under set -euo pipefail):\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
    if !skipped.is_empty() {
        skip(
            "every_sh_block_of_the_readme_runs_as_written",
            &format!(
                "{} block(s) not run:\n  {}",
                skipped.len(),
                skipped.join("\n  ")
            ),
        );
    }
}

/// The runner itself: what passes, fails, is not run or is refused.
#[test]
fn the_readme_runner_holds_each_block_to_its_word() {
    let md = "intro\n\
        ```sh\n\
        test \"$(command -v relay)\" -ef \"$PWD/../bin/relay\"\n\
        test ! -e \"$RELAY_HOME\" && test -z \"$(ls -A)\"\n\
        relay endpoints add a && relay send a hi >/dev/null\n\
        ```\n\
        - a list item\n\
        \x20 ```sh\n\
        \x20 # expect-exit: 66\n\
        \x20 relay recv nobody.here || test $? = 69\n\
        \x20 relay endpoints add q\n\
        \x20 relay recv q\n\
        \x20 ```\n\
        ```sh\n\
        false\n\
        echo not reached\n\
        ```\n\
        ```sh\n\
        echo \"$UNSET_VARIABLE\"\n\
        ```\n\
        ```sh\n\
        false | cat\n\
        ```\n\
        ```sh norun\n\
        exit 1\n\
        ```\n\
        ```text\n\
        exit 1\n\
        ```\n\
        ```sh\n\
        sleep 300 & echo $! > \"$HOME/../sleeper\"\n\
        ```\n";
    let b = blocks(md).unwrap_or_else(|e| panic!("{e}"));
    let lines: Vec<(usize, bool)> = b.iter().map(|b| (b.line, b.norun)).collect();
    assert_eq!(
        lines,
        [
            (2, false),
            (8, false),
            (14, false),
            (18, false),
            (21, false),
            (24, true),
            (30, false)
        ]
    );
    assert!(
        b[1].code.starts_with("# expect-exit: 66\nrelay recv"),
        "{:?}",
        b[1].code
    );
    assert_eq!(b[1].expected_exit(), Ok(66));
    assert_eq!(
        check(&b[0]),
        Ok(None),
        "relay on PATH, fresh home, empty cwd"
    );
    assert_eq!(check(&b[1]), Ok(None), "an expected exit status passes");
    for (i, why) in [(2, "set -e"), (3, "set -u"), (4, "pipefail")] {
        let e = check(&b[i]).expect_err(why);
        assert!(e.contains("exited 1, expected 0"), "{why}: {e}");
        assert!(
            e.contains("--- stdout (end)\n\n"),
            "{why}: nothing after the failure ran: {e}"
        );
    }

    // A background job does not outlive its block.
    let world = Relay::new();
    let pidfile = world.scratch().join("sleeper");
    let code = format!("sleep 300 & echo $! > {}\n", pidfile.display());
    assert_eq!(run(&code).status, Some(0));
    let pid = fs::read_to_string(&pidfile).unwrap_or_default();
    assert!(!pid.trim().is_empty());
    assert!(
        !Path::new("/proc").join(pid.trim()).exists(),
        "the block's background sleep {pid} is still running"
    );

    let needs = Block {
        line: 1,
        norun: false,
        code: "# needs: git no-such-tool-anywhere\nexit 1\n".into(),
    };
    assert_eq!(needs.needs(), ["git", "no-such-tool-anywhere"]);
    let skipped = check(&needs).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        skipped.as_deref(),
        Some("needs no-such-tool-anywhere (not on PATH)"),
        "a missing tool skips the block (and under CI fails the test)"
    );

    for bad in ["```bash\nls\n```\n", "```sh nrun\nls\n```\n", "```sh\nls\n"] {
        assert!(blocks(bad).is_err(), "{bad:?} is accepted");
    }
}

/// A skip is visible locally and a failure under CI (`.ci/run` sets CI=1).
#[test]
fn a_skip_fails_under_ci_and_only_prints_elsewhere() {
    crate::harness::skip_or_fail(false, "a_test", "a tool is missing");
    let under_ci = std::panic::catch_unwind(|| {
        crate::harness::skip_or_fail(true, "a_test", "a tool is missing");
    });
    let msg = under_ci.expect_err("a skip under CI must fail the test");
    let msg = msg.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(
        msg.contains("a_test cannot run: a tool is missing; under CI=1"),
        "{msg}"
    );
}
