//! `relay endpoints`: list, add and remove mailboxes.

use std::fs;
use std::path::Path;

use serde::Serialize;

use crate::cli::{EndpointsAction, EndpointsArgs};
use crate::clock::{ago, iso8601};
use crate::context::Ctx;
use crate::error::{Error, IoContext, Result};
use crate::maildir::{self, Mailbox, SUBDIRS};
use crate::output;
use crate::subject;

/// Name prefix of a mailbox `endpoints remove` renamed away to delete
/// (`doctor` reports one an interrupted remove left).
pub const GRAVE_PREFIX: &str = ".removed-";

/// `relay endpoints --json`.
#[derive(Debug, Serialize)]
struct EndpointList {
    endpoints: Vec<EndpointInfo>,
}

/// One endpoint in `relay endpoints --json` (and `status`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointInfo {
    /// The endpoint subject.
    pub subject: String,
    /// `new + cur`: what backpressure counts.
    pub depth: usize,
    /// Messages waiting in `new/`.
    pub new: usize,
    /// Claimed messages in `cur/`.
    pub cur: usize,
    /// Dead letters in `failed/`.
    pub failed: usize,
    /// `maxMailboxSize`, when backpressure is enabled.
    pub capacity: Option<u64>,
    /// `depth / capacity`, when backpressure is enabled.
    pub pressure: Option<f64>,
    /// When a message last arrived, was claimed or finished.
    pub last_activity: Option<String>,
    /// The same, in ms (0 if never), for tables.
    #[serde(skip)]
    pub last_activity_ms: u64,
    /// The host it lives on, for a remote endpoint (`relay bridge`): the
    /// counts are then of its outbox here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// Every endpoint with its depth, pressure and last activity.
pub fn infos(ctx: &Ctx) -> Result<Vec<EndpointInfo>> {
    let bp = &ctx.config.reliability.backpressure;
    let capacity = bp.enabled.then_some(bp.max_mailbox_size);
    let mut rows = Vec::new();
    let remotes = crate::bridge::directory::remotes(&ctx.home);
    let listed = match &ctx.census {
        Some(census) => census.endpoints(&ctx.home)?,
        None => maildir::list_endpoints(&ctx.home)?
            .into_iter()
            .map(|name| {
                let tally = Mailbox::at(&ctx.home, &name).tally()?;
                Ok((name, tally))
            })
            .collect::<Result<_>>()?,
    };
    for (name, tally) in listed {
        let maildir::Tally {
            new,
            cur,
            failed,
            last_activity: last,
        } = tally;
        let host = remotes.get(&name).cloned();
        #[allow(clippy::cast_precision_loss)]
        rows.push(EndpointInfo {
            subject: name,
            depth: new + cur,
            new,
            cur,
            failed,
            capacity,
            pressure: capacity.map(|c| (new + cur) as f64 / c.max(1) as f64),
            last_activity: (last > 0).then(|| iso8601(last)),
            last_activity_ms: last,
            host,
        });
    }
    Ok(rows)
}

/// Runs `relay endpoints`.
pub fn run(ctx: &mut Ctx, args: &EndpointsArgs) -> Result<()> {
    match &args.action {
        None | Some(EndpointsAction::List) => list(ctx),
        Some(EndpointsAction::Add { subjects }) => add(ctx, subjects),
        Some(EndpointsAction::Remove { subject, force }) => remove(ctx, subject, *force),
    }
}

fn list(ctx: &Ctx) -> Result<()> {
    let now = ctx.clock.now_ms();
    let rows = infos(ctx)?;
    if ctx.json {
        return output::json_line(&EndpointList { endpoints: rows });
    }
    if rows.is_empty() {
        eprintln!("relay: no endpoints yet; create one with: relay endpoints add SUBJECT");
        return Ok(());
    }
    let remote = rows.iter().any(|r| r.host.is_some());
    let mut head = vec!["endpoint", "new", "cur", "failed", "last activity"];
    if remote {
        head.push("host");
    }
    let mut t = output::table(&head);
    for r in &rows {
        let mut row = vec![
            r.subject.clone(),
            r.new.to_string(),
            r.cur.to_string(),
            r.failed.to_string(),
            ago(now, r.last_activity_ms),
        ];
        if remote {
            row.push(r.host.clone().unwrap_or_else(|| "(local)".into()));
        }
        t.add_row(row);
    }
    for i in 1..=3 {
        if let Some(c) = t.column_mut(i) {
            c.set_cell_alignment(comfy_table::CellAlignment::Right);
        }
    }
    output::print_table(&t)
}

fn add(ctx: &Ctx, subjects: &[String]) -> Result<()> {
    // Validate all first: nothing is created when any name is bad.
    for s in subjects {
        subject::validate_subject(s, "endpoint")?;
    }
    let existing = maildir::mailbox_dir_names(&ctx.home)?;
    for s in subjects {
        if let Some(other) = maildir::case_twin(s, existing.iter().chain(subjects)) {
            return Err(Error::Data(format!(
                "endpoint '{s}' differs only in case from '{other}'; mailbox names must not collide on case-insensitive filesystems"
            )));
        }
    }
    let (mut added, mut present) = (Vec::new(), Vec::new());
    for s in subjects {
        let mb = Mailbox::at(&ctx.home, s);
        if mb.is_endpoint() {
            crate::home::check_dir(mb.dir(), "mailbox")?;
            present.push(s.clone());
        } else {
            mb.create(&SUBDIRS)?;
            crate::home::sync_dir(&ctx.home.mailboxes())?;
            added.push(s.clone());
        }
    }
    if ctx.json {
        return output::json_line(&serde_json::json!({ "added": added, "existing": present }));
    }
    for s in &present {
        eprintln!("relay: endpoint '{s}' already exists");
    }
    Ok(())
}

fn remove(ctx: &Ctx, name: &str, force: bool) -> Result<()> {
    let held = remove_endpoint(&ctx.home, name, force)?;
    if ctx.json {
        return output::json_line(&serde_json::json!({ "removed": name, "deletedMessages": held }));
    }
    Ok(())
}

/// Removes endpoint `name` and its mailbox; one holding messages only with
/// `force` (they are deleted: how many).
pub fn remove_endpoint(home: &crate::home::Home, name: &str, force: bool) -> Result<usize> {
    let mb = Mailbox::open_endpoint(home, name)?;
    let not_empty = |held: usize| {
        Error::Data(format!(
            "endpoint '{name}' still holds {held} message(s) in new/, cur/ or failed/; drain it first or pass --force to delete them"
        ))
    };
    // Under the mailbox lock: nothing that takes it (a send, `dlq requeue`,
    // `gc`) moves a message in or between the directories counted.
    let _lock = mb.lock()?;
    let held = count_held(&mb)?;
    if held > 0 && !force {
        return Err(not_empty(held));
    }
    // Rename out of the namespace first so no sender sees a half-removed
    // mailbox. A writer that does not take the lock (a send with
    // backpressure off, a consumer giving a claim back, a DorkOS process)
    // may still put a message in after that, even one that found the
    // mailbox before: the kernel resolves a rename's directories before it
    // moves anything, so a writer preempted in between moves its message
    // into the renamed directory after any count made here. So no count
    // decides: each directory is taken out with rmdir, which the kernel
    // orders with every rename or link into it. A message that got in
    // first makes the rmdir fail (and the mailbox goes back, unless
    // `force`); one coming later finds no directory and its writer fails.
    let grave_name = format!("{GRAVE_PREFIX}{}", crate::envelope::random_ulid());
    let grave = home.mailboxes().join(&grave_name);
    fs::rename(mb.dir(), &grave).ctx("cannot remove", mb.dir())?;
    let buried = Mailbox::at(home, &grave_name);
    let mut deleted = 0;
    // `tmp/` last: a file there is a delivery whose rename into `new/` now fails.
    for sub in ["new", "cur", "failed", "tmp"] {
        match take_out(&buried.sub(sub), force || sub == "tmp")? {
            TakenOut::Removed(n) => deleted += n,
            TakenOut::Holds => {
                buried.create(&SUBDIRS)?;
                let held = count_held(&buried)?;
                put_back(&grave, &mb)?;
                return Err(not_empty(held));
            }
        }
    }
    // What is left: files beside the subdirectories (a DorkOS `.owner`).
    fs::remove_dir_all(&grave).ctx("cannot delete", &grave)?;
    crate::home::sync_dir(&home.mailboxes())?;
    crate::store::dorkos::endpoint_removed(home.root(), name);
    Ok(deleted)
}

/// How many times `take_out` empties a directory that files keep arriving in.
const TAKE_OUT_TRIES: usize = 100;

/// What `take_out` did.
enum TakenOut {
    /// The directory is gone, and this many messages in it were deleted.
    Removed(usize),
    /// It holds a message (and stays).
    Holds,
}

/// Removes the directory `dir` of a mailbox renamed away: rmdir, and
/// while something is in it, deletes what it holds (messages only with
/// `force`) and tries again. Once the rmdir succeeded, nothing can arrive
/// in it any more.
fn take_out(dir: &Path, force: bool) -> Result<TakenOut> {
    use rustix::fs::{AtFlags, CWD, unlinkat};
    use rustix::io::Errno;
    let mut deleted = 0;
    for _ in 0..TAKE_OUT_TRIES {
        match unlinkat(CWD, dir, AtFlags::REMOVEDIR) {
            Ok(()) | Err(Errno::NOENT) => return Ok(TakenOut::Removed(deleted)),
            Err(Errno::NOTEMPTY | Errno::EXIST) => {}
            Err(e) => return Err(Error::io("cannot delete", dir, e.into())),
        }
        for entry in fs::read_dir(dir).ctx("cannot list", dir)?.flatten() {
            let message = entry
                .file_name()
                .to_str()
                .and_then(maildir::message_id)
                .is_some();
            if message && !force {
                return Ok(TakenOut::Holds);
            }
            let path = entry.path();
            let gone = if entry.file_type().is_ok_and(|t| t.is_dir()) {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            match gone {
                Ok(()) => deleted += usize::from(message),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("cannot delete", &path, e)),
            }
        }
    }
    Err(Error::io(
        "cannot delete",
        dir,
        std::io::Error::other(format!(
            "files kept arriving while it was emptied {TAKE_OUT_TRIES} times"
        )),
    ))
}

/// Messages in `new/`, `cur/` and `failed/` of `mb`.
fn count_held(mb: &Mailbox) -> Result<usize> {
    ["new", "cur", "failed"]
        .iter()
        .map(|s| mb.count(s))
        .sum::<Result<usize>>()
}

/// Puts a mailbox renamed away to `grave` back as `mb`: by one rename, or,
/// when something was made under that name meanwhile (a send that found no
/// endpoint dead-letters into a directory of that name), by moving every
/// file back into it, never over one that is there.
fn put_back(grave: &Path, mb: &Mailbox) -> Result<()> {
    use rustix::fs::{CWD, RenameFlags, renameat_with};
    use rustix::io::Errno;
    let noreplace =
        |from: &Path, to: &Path| renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE);
    match noreplace(grave, mb.dir()) {
        Ok(()) => return Ok(()),
        Err(Errno::EXIST | Errno::NOTEMPTY) => {}
        Err(e) => return Err(stranded(grave, mb, e.into())),
    }
    mb.create(&SUBDIRS)?;
    let mut left = false;
    for sub in ["new", "cur", "failed"] {
        let from = grave.join(sub);
        for entry in fs::read_dir(&from).ctx("cannot list", &from)?.flatten() {
            let to = mb.sub(sub).join(entry.file_name());
            left |= noreplace(&entry.path(), &to).is_err();
        }
    }
    if left {
        return Err(stranded(
            grave,
            mb,
            std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "a file of the same name is there",
            ),
        ));
    }
    // Files beside the subdirectories (a DorkOS `.owner` marker), unless
    // one was made meanwhile.
    for entry in fs::read_dir(grave).ctx("cannot list", grave)?.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_file()) {
            let _ = noreplace(&entry.path(), &mb.dir().join(entry.file_name()));
        }
    }
    for sub in SUBDIRS {
        crate::home::sync_dir(&mb.sub(sub))?;
    }
    fs::remove_dir_all(grave).ctx("cannot delete", grave)
}

fn stranded(grave: &Path, mb: &Mailbox, e: std::io::Error) -> Error {
    Error::io(
        format!(
            "cannot put the messages back from {} (they are safe there; move them by hand) into",
            grave.display()
        ),
        mb.dir(),
        e,
    )
}
