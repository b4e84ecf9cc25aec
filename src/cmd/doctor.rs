//! `relay doctor [--repair]`: checks the store against the Maildir (the
//! source of truth) and, with `--repair`, makes the index agree with it.
//! It never deletes a message: repairs move, re-index or forget index rows.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use serde::Serialize;
use serde_json::Value;

use crate::cli::DoctorArgs;
use crate::cmd::endpoints::GRAVE_PREFIX;
use crate::context::Ctx;
use crate::envelope::Envelope;
use crate::error::{Error, Result};
use crate::maildir::{self, Mailbox};
use crate::output;
use crate::vocab::Code;
use crate::vocab::Status;

/// How old a reason sidecar without its letter must be to be reported:
/// a younger one may belong to a dead-lettering still under way.
const ORPHAN_REASON_MIN_AGE_MS: u64 = 60_000;

/// One problem found (and what was done about it).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Finding {
    check: &'static str,
    detail: String,
    repaired: bool,
}

/// What the Maildir holds for one (endpoint, id).
struct OnDisk {
    status: Status,
    envelope: Envelope,
    failure: Option<(String, String)>,
}

/// Runs `relay doctor`.
pub fn run(ctx: &mut Ctx, args: &DoctorArgs) -> Result<()> {
    let repair = args.repair;
    let now = ctx.clock.now_ms();
    let mut findings = Vec::new();
    let mut note = |check: &'static str, detail: String, repaired: bool| {
        findings.push(Finding {
            check,
            detail,
            repaired,
        });
    };

    // 1. The index file itself. Only proven damage (not a database, corrupt,
    // or a failed integrity check) sets it aside: a lock, a full disk or
    // another I/O error leaves it as it is, with its keys and history.
    let db = ctx.home.db_file();
    // The index is checked caught up with the journal: one that lags it
    // (ingestion put off on a full disk) would show sends as missing.
    let problem = match ctx.store().and_then(|s| {
        s.ingest()?;
        s.integrity()
    }) {
        Ok(p) => p,
        Err(Error::Damaged(msg)) => Some(msg),
        // A directory (or anything else) where the file should be is not a
        // database either.
        Err(e) if fs::symlink_metadata(&db).is_ok_and(|m| !m.is_file()) => {
            Some(format!("not a regular file ({e})"))
        }
        Err(e) => return Err(left_untouched(e, &db)),
    };
    let mut rebuilt = false;
    let mut last_event = None;
    let index_usable = match problem {
        Some(p) => {
            // Let go of the damaged file before it is moved aside.
            ctx.close_store();
            last_event = repair.then(|| last_event_id(&db)).flatten();
            let repaired = repair && set_aside(&db, now)?;
            note(
                "index",
                format!("{} is damaged: {p}", db.display()),
                repaired,
            );
            rebuilt = repaired;
            repaired
        }
        None => true,
    };
    if rebuilt {
        // The new index does not know what was acked: a batch log of
        // another boot must not be replayed into it.
        for u in crate::store::batchlog::disarm_foreign(&ctx.home, now)? {
            if u.restored > 0 {
                note(
                    "batch log",
                    format!(
                        "{} damaged message file(s) written again from {}",
                        u.restored,
                        u.path.display()
                    ),
                    true,
                );
            }
            if !u.missing.is_empty() {
                let ids: Vec<String> = u
                    .missing
                    .iter()
                    .map(|(ep, id)| format!("{id} in '{ep}'"))
                    .collect();
                note(
                    "batch log",
                    format!(
                        "{} message(s) of a batch written before a restart are not in their mailboxes ({}); the damaged index cannot tell whether they were acked, so they were not restored; the log is kept at {} (re-send by hand any that were not acked)",
                        ids.len(),
                        ids.join(", "),
                        u.path.display()
                    ),
                    false,
                );
            }
        }
        // The new index's events continue the old one's ids (a stream's
        // Last-Event-ID, `events --follow`): above its last id if it can
        // still be read, and above the time in ms, more events than any
        // index could have given out. (Opened only now: opening settles
        // batch logs, and those of another boot are disarmed above.)
        let floor = last_event
            .unwrap_or(0)
            .max(i64::try_from(now).unwrap_or(i64::MAX));
        ctx.store()?.number_events_above(floor)?;
    }

    // The access rules: a file that cannot be read as rules refuses every
    // send. It is the operator's file: reported, never rewritten.
    let rules_path = ctx.home.root().join(crate::access::FILE_NAME);
    let rules = crate::access::Rules::check_file(&rules_path);
    if let crate::access::Rules::Quarantined(why) = &rules.rules {
        note(
            "access rules",
            format!(
                "{why}; every send is refused (exit 77) until you {}",
                crate::access::FIX
            ),
            false,
        );
    }
    for w in &rules.warnings {
        output::warn(w);
    }

    // DorkOS's index beside the home: updates relay could not write yet
    // (DorkOS was busy) are written now on repair.
    let dorkos = crate::store::dorkos::health(ctx.home.root(), repair);
    for d in &dorkos {
        if d.caught_up > 0 {
            note(
                "DorkOS index",
                format!(
                    "{} was behind relay by {} update(s) kept in {} (DorkOS was busy)",
                    d.path, d.caught_up, d.pending_file
                ),
                true,
            );
        }
        if d.pending > 0 {
            note(
                "DorkOS index",
                format!(
                    "{} is behind relay by {} update(s) kept in {}{}; relay doctor --repair writes them once DorkOS's index takes them",
                    d.path,
                    d.pending,
                    d.pending_file,
                    d.problem
                        .as_ref()
                        .map(|p| format!(" ({p})"))
                        .unwrap_or_default()
                ),
                false,
            );
        }
    }
    // Messages DorkOS's index knows are DorkOS's mail (or relay's, in both
    // indexes): a file relay's index lacks is not a problem then.
    let dorkos_known = if dorkos.iter().any(|d| d.in_step) {
        crate::store::dorkos::known(ctx.home.root())
    } else {
        std::collections::HashSet::new()
    };

    // 2. Every mailbox directory: permissions, tmp/ leftovers, unreadable files.
    let max_tmp_age = ctx.config.tmp_max_age_secs.saturating_mul(1000);
    let mut disk: HashMap<(String, String), OnDisk> = HashMap::new();
    // Symlinks too: a linked mailbox is exactly what must be reported.
    let (graves, mut names): (Vec<String>, Vec<String>) = fs::read_dir(ctx.home.mailboxes())
        .map_err(|e| Error::io("cannot list", &ctx.home.mailboxes(), e))?
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir() || t.is_symlink()))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| !n.starts_with('.') || n.starts_with(GRAVE_PREFIX))
        .partition(|n| n.starts_with(GRAVE_PREFIX));
    for grave in graves {
        check_grave(&Mailbox::at(&ctx.home, &grave), repair, &mut note)?;
    }
    names.sort();
    let dirs: std::collections::HashSet<String> = names.iter().cloned().collect();
    let mut progress = output::Progress::new("doctor: mailboxes");
    let total = names.len();
    for (n, name) in names.into_iter().enumerate() {
        progress.tick(n, Some(total));
        let mb = Mailbox::at(&ctx.home, &name);
        let md =
            fs::symlink_metadata(mb.dir()).map_err(|e| Error::io("cannot inspect", mb.dir(), e))?;
        if md.file_type().is_symlink() {
            note(
                "permissions",
                format!(
                    "mailbox {} is a symlink; relay refuses it (replace it with a directory)",
                    mb.dir().display()
                ),
                false,
            );
            continue;
        }
        for dir in std::iter::once(mb.dir().to_path_buf())
            .chain(maildir::SUBDIRS.iter().map(|s| mb.sub(s)))
        {
            let Ok(m) = fs::symlink_metadata(&dir) else {
                continue;
            };
            if m.file_type().is_symlink() {
                let what = format!(
                    "{} is a symlink; relay refuses it (replace it with a directory)",
                    dir.display()
                );
                note("permissions", what, false);
                continue;
            }
            if m.mode() & 0o002 != 0 {
                let repaired =
                    repair && fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).is_ok();
                note(
                    "permissions",
                    format!(
                        "{} is world-writable (mode {:o})",
                        dir.display(),
                        m.mode() & 0o7777
                    ),
                    repaired,
                );
            }
        }
        for (path, age) in mb.stale_tmp(now, max_tmp_age) {
            // Never renamed into new/: not a delivered message.
            let repaired = repair && fs::remove_file(&path).is_ok();
            note(
                "stray tmp file",
                format!("{} ({} old)", path.display(), crate::clock::human_ms(age)),
                repaired,
            );
        }
        for (id, age) in mb.orphan_reasons(now, ORPHAN_REASON_MIN_AGE_MS)? {
            // A crash between a dead-lettering's sidecar and its letter:
            // readers ignore it; the letter, if any, is still in cur/.
            let path = mb.sub("failed").join(format!("{id}.reason.json"));
            let (repaired, failed) = if repair {
                match mb.remove_orphan_reason(&id, now, ORPHAN_REASON_MIN_AGE_MS) {
                    Ok(true) => (true, String::new()),
                    // Its letter came, or a new dead-lettering replaced it.
                    Ok(false) => continue,
                    Err(e) => (false, format!("; cannot remove it: {e}")),
                }
            } else {
                (false, String::new())
            };
            note(
                "orphan reason sidecar",
                format!(
                    "{} has no dead letter {id}.json beside it ({} old; left by a crash while dead-lettering, removed on repair){failed}",
                    path.display(),
                    crate::clock::human_ms(age)
                ),
                repaired,
            );
        }
        for (sub, status) in [
            ("new", Status::Pending),
            ("cur", Status::Claimed),
            ("failed", Status::Failed),
        ] {
            for id in mb.list(sub)? {
                match mb.read_envelope(sub, &id) {
                    Some(envelope) => {
                        let failure = (status == Status::Failed).then(|| failure_of(&mb, &id));
                        disk.insert(
                            (name.clone(), id),
                            OnDisk {
                                status,
                                envelope,
                                failure,
                            },
                        );
                    }
                    // Gone since it was listed: claimed, acked or moved on.
                    None if !mb.has(sub, &id) => {}
                    None if sub != "failed" => {
                        let path = mb.sub(sub).join(format!("{id}.json"));
                        let repaired = repair && quarantine(&mb, sub, &id, now)?;
                        if repair && !repaired && !mb.has(sub, &id) {
                            continue;
                        }
                        note(
                            "unreadable message",
                            format!(
                                "{} is not an envelope (moved to failed/ on repair)",
                                path.display()
                            ),
                            repaired,
                        );
                    }
                    None => {}
                }
            }
        }
    }

    progress.finish();

    // 3. The index against the Maildir (only once there is a usable one).
    if !index_usable {
        return finish(ctx, &findings, disk.len(), repair, &dorkos);
    }
    let home = ctx.home.clone();
    let store = ctx.store()?;
    if rebuilt {
        // This boot's logs were written against the old index too: retire
        // them now (one syncfs), so none can replay into the new one.
        crate::store::batchlog::settle(&home, store, now, true)?;
    }
    let mut tx = store.begin()?;
    let mut rows: HashMap<(String, String), Status> = HashMap::new();
    for (ep, id, status) in tx.live_rows()? {
        rows.insert((ep, id), status);
    }
    // Commands run beside doctor: every difference seen between the scan
    // and the index is checked again against the Maildir as it is now,
    // under the index's write lock, and what it says now is what is
    // written. A command that moved a file and waits for the lock writes
    // its own row after this commit.
    let mut keys: Vec<&(String, String)> = rows
        .iter()
        .filter(|(k, st)| disk.get(*k).is_none_or(|d| d.status != **st))
        .map(|(k, _)| k)
        .chain(disk.keys().filter(|k| !rows.contains_key(*k)))
        .collect();
    keys.sort();
    keys.dedup();
    for key in keys {
        let mb = Mailbox::at(&home, &key.0);
        let now_at = locate(&mb, &key.1);
        match (rows.get(key), now_at) {
            (Some(status), None) => {
                // A send records a copy's row before renaming it into
                // new/, under the mailbox lock: while that lock is held,
                // the file may be on its way.
                if *status == Status::Pending && !settled_absent(&mb, &key.1) {
                    continue;
                }
                if repair {
                    tx.forget(&key.0, &key.1)?;
                }
                note(
                    "index row without file",
                    format!(
                        "{} in '{}' is {status} in the index but not on disk",
                        key.1, key.0
                    ),
                    repair,
                );
            }
            (Some(status), Some(at)) if at != *status => {
                if repair {
                    tx.set_status(&key.0, &key.1, at)?;
                }
                note(
                    "status mismatch",
                    format!(
                        "{} in '{}' is {status} in the index but {} on disk",
                        key.1,
                        key.0,
                        at.as_str()
                    ),
                    repair,
                );
            }
            (Some(_), Some(_)) | (None, None) => {}
            (None, Some(_)) if dorkos_known.contains(key) => {
                // DorkOS's own mail: relay indexes it when it claims it.
            }
            (None, Some(at)) => {
                let Some(found) = on_disk(&mb, &key.1, at, disk.get(key)) else {
                    continue; // moved on, or not an envelope (reported above)
                };
                if repair {
                    let failure = found
                        .failure
                        .as_ref()
                        .map(|(c, r)| (c.as_str(), r.as_str()));
                    tx.index_found(&key.0, &found.envelope, at, failure, now)?;
                }
                note(
                    "file without index row",
                    format!("{} in '{}' ({}) is not indexed", key.1, key.0, at.as_str()),
                    repair,
                );
            }
        }
    }
    tx.commit()?;

    // 4. DorkOS's rows of these mailboxes against their files: what a
    // crash between a file's move and its DorkOS row left out of step.
    if dorkos.iter().any(|d| d.in_step) {
        let copies: Vec<crate::store::dorkos::Copy<'_>> = disk
            .iter()
            .map(|((ep, _), d)| crate::store::dorkos::Copy {
                endpoint: ep,
                envelope: &d.envelope,
                status: d.status.dorkos(),
            })
            .collect();
        let boxes = Boxes {
            home: &home,
            store: ctx.store()?,
        };
        let root = home.root().to_path_buf();
        for r in crate::store::dorkos::resync(&root, &dirs, &copies, &boxes, now, repair) {
            if let Some(p) = &r.problem {
                note(
                    "DorkOS index",
                    format!("{} could not be compared with the mailboxes: {p}", r.path),
                    false,
                );
            } else if r.missing + r.wrong + r.orphaned > 0 {
                note(
                    "DorkOS index",
                    format!(
                        "{} was out of step with the mailboxes (a crash between a move and its DorkOS row): {} file(s) without a row, {} row(s) with another status than where the file is, {} row(s) of files that are gone{}",
                        r.path,
                        r.missing,
                        r.wrong,
                        r.orphaned,
                        if r.repaired {
                            ""
                        } else {
                            "; relay doctor --repair writes DorkOS's rows"
                        }
                    ),
                    r.repaired,
                );
            }
        }
    }
    finish(ctx, &findings, disk.len(), repair, &dorkos)
}

/// The mailboxes and relay's index as `dorkos::resync` asks about them.
struct Boxes<'a> {
    home: &'a crate::home::Home,
    store: &'a crate::store::index::Store,
}

impl crate::store::dorkos::Mailboxes for Boxes<'_> {
    fn now_at(&self, endpoint: &str, id: &str) -> Option<Option<crate::store::dorkos::Status>> {
        let mb = Mailbox::at(self.home, endpoint);
        match locate(&mb, id) {
            Some(Status::Failed) => Some(Some(crate::store::dorkos::Status::Failed)),
            Some(_) => Some(Some(crate::store::dorkos::Status::Pending)),
            None if settled_absent(&mb, id) => Some(None),
            None => None,
        }
    }

    fn acked(&self, endpoint: &str, id: &str) -> bool {
        self.store
            .claim_row(endpoint, id)
            .ok()
            .flatten()
            .is_some_and(|r| r.status == Status::Acked)
    }
}

/// A directory an `endpoints remove` renamed away and did not delete (it
/// was killed): removed on repair when it holds no message, reported when
/// it does (its endpoint's name is not known any more). One whose remove is
/// still running (it holds the lock) is left alone.
fn check_grave(
    grave: &Mailbox,
    repair: bool,
    note: &mut impl FnMut(&'static str, String, bool),
) -> Result<()> {
    let Some(_lock) = grave.try_lock()? else {
        return Ok(()); // its remove is still running
    };
    let held: usize = ["new", "cur", "failed"]
        .iter()
        .map(|s| grave.count(s))
        .sum::<Result<usize>>()?;
    if held == 0 {
        let repaired = repair && fs::remove_dir_all(grave.dir()).is_ok();
        note(
            "interrupted remove",
            format!(
                "{} is what an interrupted `endpoints remove` left (no message in it)",
                grave.dir().display()
            ),
            repaired,
        );
    } else {
        note(
            "interrupted remove",
            format!(
                "{} (left by an interrupted `endpoints remove`) holds {held} message(s): move its new/, cur/ and failed/ files into their endpoint's by hand",
                grave.dir().display()
            ),
            false,
        );
    }
    Ok(())
}

/// Where message `id` is in `mb` right now. `new/` is looked at again last:
/// a message given back (`cur/` or `failed/` to `new/`) while the others
/// were looked at is found there.
fn locate(mb: &Mailbox, id: &str) -> Option<Status> {
    [
        ("new", Status::Pending),
        ("cur", Status::Claimed),
        ("failed", Status::Failed),
        ("new", Status::Pending),
    ]
    .into_iter()
    .find(|(sub, _)| mb.has(sub, id))
    .map(|(_, status)| status)
}

/// What is on disk for `id` in `at`: from the scan if it saw it there,
/// else read again (`None` if it moved on or is not an envelope).
fn on_disk(mb: &Mailbox, id: &str, at: Status, seen: Option<&OnDisk>) -> Option<OnDisk> {
    if let Some(d) = seen.filter(|d| d.status == at) {
        return Some(OnDisk {
            status: at,
            envelope: d.envelope.clone(),
            failure: d.failure.clone(),
        });
    }
    let sub = match at {
        Status::Pending => "new",
        Status::Claimed => "cur",
        Status::Failed | Status::Acked => "failed",
    };
    let envelope = mb.read_envelope(sub, id)?;
    Some(OnDisk {
        status: at,
        envelope,
        failure: (at == Status::Failed).then(|| failure_of(mb, id)),
    })
}

/// A dead letter's code and reason from its sidecar.
fn failure_of(mb: &Mailbox, id: &str) -> (String, String) {
    let r = mb.read_reason(id);
    (
        r.as_ref()
            .and_then(|r| r.code.clone())
            .unwrap_or_else(|| "unknown".into()),
        r.map_or_else(|| "no reason sidecar".into(), |r| r.reason),
    )
}

/// An index that could not be checked for a reason other than damage: the
/// same error (75 for a lock, 74 for a full disk or I/O), saying the file
/// was left as it is.
fn left_untouched(e: Error, db: &std::path::Path) -> Error {
    let why = format!(
        "; {} was left as it is (only a file that is not a database or fails its integrity check is set aside)",
        db.display()
    );
    match e {
        Error::Locked(m) => Error::Locked(format!("{m}{why}")),
        Error::Store(m) => Error::Store(format!("cannot check the index: {m}{why}")),
        Error::Full(m) => Error::Full(format!("cannot check the index: {m}{why}")),
        other => other,
    }
}

/// Whether message `id` is surely not in `mb`: its lock is free (no send
/// is between recording a row and renaming its file) and the file is not
/// there once it is taken.
fn settled_absent(mb: &Mailbox, id: &str) -> bool {
    match mb.try_lock() {
        Ok(Some(_held)) => locate(mb, id).is_none(),
        Ok(None) => false,
        // No mailbox to lock (removed): no send is delivering there.
        Err(_) => true,
    }
}

/// Prints the findings; fails (65) if any problem is left.
fn finish(
    ctx: &Ctx,
    findings: &[Finding],
    on_disk: usize,
    repair: bool,
    dorkos: &[crate::store::dorkos::Health],
) -> Result<()> {
    let problems = findings.iter().filter(|f| !f.repaired).count();
    if ctx.json {
        output::json_line(&serde_json::json!({
            "consistent": problems == 0,
            "messagesOnDisk": on_disk,
            "findings": findings,
            "dorkos": dorkos,
        }))?;
    } else if findings.is_empty() {
        output::line(&format!(
            "relay store is consistent ({on_disk} message(s) on disk, all indexed)"
        ))?;
    } else {
        let mut t = output::table(&["check", "detail", "repaired"]);
        for f in findings {
            t.add_row(vec![
                f.check.to_string(),
                f.detail.clone(),
                if f.repaired {
                    "yes".into()
                } else {
                    "no".into()
                },
            ]);
        }
        output::print_table(&t)?;
    }
    if !ctx.json {
        for d in dorkos {
            let state = match (&d.problem, d.in_step) {
                (Some(p), false) => format!("not DorkOS's index, left alone ({p})"),
                _ if d.pending > 0 => format!("{} update(s) pending", d.pending),
                _ => "kept in step".to_string(),
            };
            output::line(&format!("DorkOS index {}: {state}", d.path))?;
        }
    }
    if problems > 0 {
        return Err(Error::Data(format!(
            "{problems} problem(s) left; {}",
            if repair {
                "see the table above (symlinked mailboxes, unreplayed batch logs and access rules need a person)"
            } else if findings
                .iter()
                .all(|f| f.repaired || f.check == "access rules")
            {
                "fix access-rules.json as the table says"
            } else {
                "run: relay doctor --repair"
            }
        )));
    }
    Ok(())
}

/// Moves a damaged index (and its WAL files) aside; a fresh one is made on
/// the next open.
/// The last event id the damaged index at `db` gave out, if it can still
/// be read (read-only; any failure is `None`).
fn last_event_id(db: &std::path::Path) -> Option<i64> {
    use rusqlite::OpenFlags;
    let c = rusqlite::Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY).ok()?;
    let seq: Option<i64> = c
        .query_row(
            "SELECT seq FROM sqlite_sequence WHERE name = 'events'",
            [],
            |r| r.get(0),
        )
        .ok();
    let max: Option<i64> = c
        .query_row("SELECT MAX(id) FROM events", [], |r| r.get(0))
        .ok()
        .flatten();
    seq.max(max)
}

fn set_aside(db: &std::path::Path, now: u64) -> Result<bool> {
    for suffix in ["", "-wal", "-shm"] {
        let from = std::path::PathBuf::from(format!("{}{suffix}", db.display()));
        if from.exists() {
            let to = std::path::PathBuf::from(format!("{}.corrupt-{now}{suffix}", db.display()));
            fs::rename(&from, &to).map_err(|e| Error::io("cannot move aside", &from, e))?;
        }
    }
    Ok(true)
}

/// Moves an unreadable file from `new/` or `cur/` to `failed/` with a
/// `malformed` sidecar.
fn quarantine(mb: &Mailbox, sub: &str, id: &str, now: u64) -> Result<bool> {
    if sub == "new" {
        let (from, to) = (
            mb.sub("new").join(format!("{id}.json")),
            mb.sub("cur").join(format!("{id}.json")),
        );
        if fs::rename(&from, &to).is_err() {
            return Ok(false);
        }
    }
    mb.fail(
        id,
        Value::Null,
        "not a relay envelope (found by relay doctor)",
        Code::Malformed,
        now,
    )
}
