//! Maildir mailboxes: endpoint registry on disk, atomic delivery (tmp -> new),
//! atomic claim (new -> cur), ack, nack and dead letters with reason sidecars.
//!
//! The Maildir is the source of truth for messages. This module never
//! touches SQLite; callers record what happened in the index.

use std::collections::HashMap;
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::clock::{iso8601, system_time_ms};
use crate::envelope::Envelope;
use crate::error::{Error, IoContext, Result};
use crate::home::{self, Home};
use crate::subject;
use crate::vocab::{Code, DorkStatus};

/// The four Maildir subdirectories, in creation order: `new` comes last
/// because its presence is what makes a directory an endpoint.
pub const SUBDIRS: [&str; 4] = ["tmp", "cur", "failed", "new"];

/// Suffix of message files.
const MSG_EXT: &str = ".json";
/// Suffix of dead-letter reason sidecars.
const REASON_EXT: &str = ".reason.json";

/// Dead-letter sidecar `<id>.reason.json`, DorkOS's four keys plus our `code`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Reason {
    /// The envelope as rejected (null when the file was not an envelope).
    pub envelope: Value,
    /// Human-readable cause.
    pub reason: String,
    /// ISO-8601 time of the rejection.
    pub failed_at: String,
    /// The mailbox directory name.
    pub endpoint_hash: String,
    /// Machine-readable cause (`nack`, `no_match`, `malformed`, budget codes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

/// One message claimed by `claim_oldest`.
#[derive(Debug)]
pub struct Claimed {
    /// The parsed envelope.
    pub envelope: Envelope,
    /// The file's bytes as read at the claim.
    pub bytes: Vec<u8>,
}

/// A file in `new/` that could not be parsed and was moved to `failed/`.
#[derive(Debug)]
pub struct Quarantined {
    /// File stem.
    pub id: String,
    /// What was wrong with it.
    pub problem: String,
}

/// Outcome of acknowledging one id.
#[derive(Debug, PartialEq, Eq)]
pub enum AckOutcome {
    /// The claimed file was removed.
    Removed,
    /// No such file in `cur/`.
    Missing,
}

/// A mailbox directory `<home>/mailboxes/<name>`.
#[derive(Debug, Clone)]
pub struct Mailbox {
    /// The endpoint subject (= directory name).
    pub name: String,
    dir: PathBuf,
    /// The largest message file read (`Home::message_cap`).
    cap: u64,
}

impl Mailbox {
    /// The mailbox for `name` (not checked to exist).
    #[must_use]
    pub fn at(home: &Home, name: &str) -> Self {
        Mailbox {
            name: name.to_string(),
            dir: home.mailboxes().join(name),
            cap: home.message_cap(),
        }
    }

    /// The registered endpoint `name`, or `NoEndpoint` listing the known ones.
    pub fn open_endpoint(home: &Home, name: &str) -> Result<Self> {
        subject::validate_subject(name, "endpoint")?;
        let mb = Mailbox::at(home, name);
        if !mb.is_endpoint() {
            return Err(Error::NoEndpoint(format!(
                "no endpoint '{name}'; {}",
                known_endpoints_hint(home)
            )));
        }
        mb.check()?;
        Ok(mb)
    }

    /// Refuses a mailbox whose directory or any of its four subdirectories
    /// is a symlink, not a directory (or missing), or world-writable: relay
    /// must never write through a link out of the home, nor mistake a
    /// missing `cur/` for a lost race.
    pub fn check(&self) -> Result<()> {
        home::check_dir(&self.dir, "mailbox")?;
        for sub in SUBDIRS {
            home::check_dir(&self.sub(sub), "mailbox directory")?;
        }
        Ok(())
    }

    /// `check` for what exists of the mailbox (a dead-letter-only one has
    /// no `new/`): nothing of it is a symlink or world-writable.
    pub fn check_present(&self) -> Result<()> {
        home::check_dir(&self.dir, "mailbox")?;
        for sub in SUBDIRS {
            let path = self.sub(sub);
            if fs::symlink_metadata(&path).is_ok() {
                home::check_dir(&path, "mailbox directory")?;
            }
        }
        Ok(())
    }

    /// The mailbox directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `<mailbox>/<sub>`.
    #[must_use]
    pub fn sub(&self, sub: &str) -> PathBuf {
        self.dir.join(sub)
    }

    fn file(&self, sub: &str, id: &str) -> PathBuf {
        self.dir.join(sub).join(file_name(id))
    }

    /// Whether this is a registered endpoint (its `new/` exists).
    #[must_use]
    pub fn is_endpoint(&self) -> bool {
        fs::symlink_metadata(self.sub("new")).is_ok_and(|m| m.is_dir())
    }

    /// Creates the mailbox directories (0700) that are missing; `new/` last.
    /// Refuses any of them that is a symlink (or world-writable).
    pub fn create(&self, subdirs: &[&str]) -> Result<()> {
        home::create_dir_secure(&self.dir, false)?;
        home::check_dir(&self.dir, "mailbox")?;
        for s in subdirs {
            let sub = self.sub(s);
            home::create_dir_secure(&sub, false)?;
            home::check_dir(&sub, "mailbox directory")?;
        }
        Ok(())
    }

    /// Delivers `env` Maildir-atomically: exclusive create in `tmp/`, write,
    /// fsync (if `sync`), rename into `new/`, fsync `new/` (if `sync`).
    /// On return the message is visible whole (`Ok`) or not at all (`Err`,
    /// nothing left in `tmp/`); `Ok(Some(e))` when it is visible but `new/`
    /// could not be fsynced.
    pub fn deliver(&self, env: &Envelope, sync: bool) -> Result<Option<Error>> {
        self.deliver_bytes(&env.id, &env.to_file_bytes()?, sync)
    }

    /// `deliver` for a message `id` already serialized.
    pub fn deliver_bytes(&self, id: &str, bytes: &[u8], sync: bool) -> Result<Option<Error>> {
        let name = file_name(id);
        if !sync && self.link_new(&name, bytes)? {
            return Ok(None);
        }
        home::write_new_file(&self.sub("tmp").join(&name), bytes, sync)?;
        self.move_in(&name, "new")?;
        Ok(sync
            .then(|| home::sync_dir(&self.sub("new")).err())
            .flatten())
    }

    /// Delivers without fsync in one directory operation instead of two:
    /// the file is written unnamed in `new/` (`O_TMPFILE`), then linked in
    /// whole. `Ok(false)` where the filesystem (or a missing `/proc`) does
    /// not allow it: the caller goes through `tmp/`. Not for durable
    /// delivery: the fsynced inode would still count no links.
    fn link_new(&self, name: &str, bytes: &[u8]) -> Result<bool> {
        use rustix::fs::{AtFlags, CWD, Mode, OFlags};
        use rustix::io::Errno;
        use std::io::Write;
        use std::os::fd::AsRawFd;
        use std::sync::atomic::{AtomicBool, Ordering};
        static UNSUPPORTED: AtomicBool = AtomicBool::new(false);
        if UNSUPPORTED.load(Ordering::Relaxed) {
            return Ok(false);
        }
        let new = self.sub("new");
        let flags = OFlags::WRONLY | OFlags::TMPFILE | OFlags::CLOEXEC;
        let mut f = match rustix::fs::open(&new, flags, Mode::from_raw_mode(home::FILE_MODE)) {
            Ok(fd) => fs::File::from(fd),
            Err(Errno::OPNOTSUPP | Errno::ISDIR | Errno::INVAL) => {
                UNSUPPORTED.store(true, Ordering::Relaxed);
                return Ok(false);
            }
            // `tmp/` names what is wrong (a missing mailbox, say) better.
            Err(_) => return Ok(false),
        };
        f.write_all(bytes).ctx("cannot write a new file in", &new)?;
        let dest = new.join(name);
        let fd_path = format!("/proc/self/fd/{}", f.as_raw_fd());
        match rustix::fs::linkat(CWD, fd_path.as_str(), CWD, &dest, AtFlags::SYMLINK_FOLLOW) {
            Ok(()) => Ok(true),
            Err(Errno::EXIST) => Err(Error::io("cannot create", &dest, Errno::EXIST.into())),
            // No /proc, a sandbox refusing the link, ...: `tmp/` names what
            // is wrong if it fails too.
            Err(_) => {
                UNSUPPORTED.store(true, Ordering::Relaxed);
                Ok(false)
            }
        }
    }

    /// Renames `tmp/<name>` to `<sub>/<name>`; on failure the tmp file is
    /// removed, so nothing half-delivered stays behind.
    fn move_in(&self, name: &str, sub: &str) -> Result<()> {
        let (tmp, dest) = (self.sub("tmp").join(name), self.sub(sub).join(name));
        fs::rename(&tmp, &dest).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            Error::io("cannot move into", &dest, e)
        })
    }

    /// Writes `bytes` as `<sub>/<name>` through `tmp/` (exclusive create,
    /// rename), fsyncing the file when `sync` and `<sub>` when `sync_dir`.
    fn place(&self, name: &str, bytes: &[u8], sub: &str, sync: bool, sync_dir: bool) -> Result<()> {
        home::write_new_file(&self.sub("tmp").join(name), bytes, sync)?;
        self.move_in(name, sub)?;
        if sync_dir {
            home::sync_dir(&self.sub(sub))?;
        }
        Ok(())
    }

    /// `place` over a file that may exist already, and over the `tmp/` file
    /// an earlier writer of the same name may have left when it crashed.
    fn place_over(&self, name: &str, bytes: &[u8], sub: &str, sync: bool) -> Result<()> {
        let _ = fs::remove_file(self.sub("tmp").join(name));
        self.place(name, bytes, sub, sync, sync)
    }

    /// Files in `tmp/` older than `max_age_ms` at `now`, with their ages:
    /// left by writers that crashed before their rename, never delivered.
    #[must_use]
    pub fn stale_tmp(&self, now: u64, max_age_ms: u64) -> Vec<(PathBuf, u64)> {
        let Ok(rd) = fs::read_dir(self.sub("tmp")) else {
            return Vec::new();
        };
        rd.flatten()
            .filter_map(|entry| {
                let modified = entry.metadata().and_then(|m| m.modified()).ok()?;
                let age = now.saturating_sub(system_time_ms(modified));
                (age > max_age_ms).then(|| (entry.path(), age))
            })
            .collect()
    }

    /// Reason sidecars in `failed/` with no letter beside them, older than
    /// `min_age_ms` at `now` by their mtime, as `(id, age)` sorted by id:
    /// what a crash between a dead-lettering's two steps left (`fail`). A
    /// younger one may be a dead-lettering under way, its letter still to
    /// come.
    pub fn orphan_reasons(&self, now: u64, min_age_ms: u64) -> Result<Vec<(String, u64)>> {
        let mut found = Vec::new();
        for entry in entries(&self.sub("failed"))? {
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(|n| n.strip_suffix(REASON_EXT)) else {
                continue;
            };
            if id.is_empty() || id.starts_with('.') {
                continue;
            }
            if let Some(age) = self.orphan_age(id, now, min_age_ms) {
                found.push((id.to_string(), age));
            }
        }
        found.sort_unstable();
        Ok(found)
    }

    /// Removes the reason sidecar of `id` if it is still an orphan older
    /// than `min_age_ms` (looked at again just before): `Ok(false)` if it
    /// is not one any more. A dead-lettering of `id` that begins in between
    /// writes a fresh sidecar (a new mtime), which is left alone; one that
    /// lands right between the look and the removal has a letter whose
    /// reason readers take from the index, as for a letter without one.
    pub fn remove_orphan_reason(
        &self,
        id: &str,
        now: u64,
        min_age_ms: u64,
    ) -> std::io::Result<bool> {
        if self.orphan_age(id, now, min_age_ms).is_none() {
            return Ok(false);
        }
        match fs::remove_file(self.reason_file(id)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The age of `id`'s sidecar if it is a regular file older than
    /// `min_age_ms` and `failed/` has no letter `id`.
    fn orphan_age(&self, id: &str, now: u64, min_age_ms: u64) -> Option<u64> {
        let meta = fs::symlink_metadata(self.reason_file(id)).ok()?;
        if !meta.is_file() || self.has("failed", id) {
            return None;
        }
        let age = now.saturating_sub(system_time_ms(meta.modified().ok()?));
        (age > min_age_ms).then_some(age)
    }

    /// Message ids in `sub`, sorted (ULIDs sort by time, so this is FIFO).
    /// Files not ending in `.json`, sidecars and dot-files are ignored.
    pub fn list(&self, sub: &str) -> Result<Vec<String>> {
        let mut ids = Vec::new();
        for entry in entries(&self.sub(sub))? {
            if let Some(id) = entry.file_name().to_str().and_then(message_id) {
                ids.push(id.to_string());
            }
        }
        ids.sort_unstable();
        Ok(ids)
    }

    /// Number of messages in `sub`: one pass over the directory with no
    /// allocation per entry (this runs on every send, at any depth).
    pub fn count(&self, sub: &str) -> Result<usize> {
        let dir = self.sub(sub);
        let flags = rustix::fs::OFlags::RDONLY
            | rustix::fs::OFlags::DIRECTORY
            | rustix::fs::OFlags::CLOEXEC;
        let fd = match rustix::fs::open(&dir, flags, rustix::fs::Mode::empty()) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) => return Ok(0),
            Err(e) => return Err(Error::io("cannot list", &dir, e.into())),
        };
        // 64 KiB of entries per getdents64: a full mailbox of 1,000 takes
        // one or two calls.
        let mut buf = vec![std::mem::MaybeUninit::<u8>::uninit(); 64 * 1024];
        let mut entries = rustix::fs::RawDir::new(&fd, &mut buf);
        let mut n = 0;
        while let Some(entry) = entries.next() {
            let entry = match entry {
                Ok(e) => e,
                // Removed while it was read (a mailbox removed meanwhile): empty.
                Err(rustix::io::Errno::NOENT) => return Ok(0),
                Err(e) => return Err(Error::io("cannot list", &dir, e.into())),
            };
            if std::str::from_utf8(entry.file_name().to_bytes())
                .ok()
                .and_then(message_id)
                .is_some()
            {
                n += 1;
            }
        }
        Ok(n)
    }

    /// An upper bound on the depth from the sizes of `new/` and `cur/`
    /// alone, without listing them (listing a directory of 1,000 entries
    /// costs ~0.5 ms of kernel time), on filesystems where a directory's size
    /// bounds its entries: ext2/3/4 (an entry takes at least 12 bytes) and
    /// tmpfs (20 bytes each). `None` elsewhere. `dir` is the open mailbox.
    pub fn depth_bound(&self, fs: &rustix::fs::StatFs) -> Result<Option<u64>> {
        const EXT4_SUPER_MAGIC: u64 = 0xEF53;
        const TMPFS_MAGIC: u64 = 0x0102_1994;
        let per_entry = match u64::try_from(fs.f_type) {
            Ok(EXT4_SUPER_MAGIC) => 12,
            Ok(TMPFS_MAGIC) => 20,
            _ => return Ok(None),
        };
        let mut bound = 0;
        for sub in ["new", "cur"] {
            let path = self.sub(sub);
            match fs::symlink_metadata(&path) {
                Ok(m) => bound += m.len() / per_entry,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("cannot stat", &path, e)),
            }
        }
        Ok(Some(bound))
    }

    /// Backpressure depth: messages in `new/` plus `cur/`, whoever put them there.
    pub fn depth(&self) -> Result<u64> {
        Ok((self.count("new")? + self.count("cur")?) as u64)
    }

    /// Takes this endpoint's exclusive lock (`flock` on the mailbox
    /// directory itself: nothing extra on disk), waiting at most the lock
    /// timeout (`lockwait`); released when the returned handle drops.
    /// Senders hold it from the depth count to the delivery, so concurrent
    /// senders can never push a mailbox past its capacity; `endpoints
    /// remove`, `dlq requeue`, `dlq purge` and `gc` hold it for what they
    /// count, move and delete.
    /// A mailbox removed while this waited is `NoEndpoint`.
    pub fn lock(&self) -> Result<fs::File> {
        let file = match fs::File::open(&self.dir) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Err(self.gone()),
            Err(e) => return Err(Error::io("cannot open", &self.dir, e)),
        };
        crate::lockwait::flock(&file, &self.dir, "the mailbox lock of")?;
        // `endpoints remove` deletes the directory before it lets go.
        if rustix::fs::fstat(&file).is_ok_and(|st| st.st_nlink == 0) {
            return Err(self.gone());
        }
        Ok(file)
    }

    /// `lock` without waiting: `None` while someone else holds it.
    pub fn try_lock(&self) -> Result<Option<fs::File>> {
        let file = match fs::File::open(&self.dir) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Err(self.gone()),
            Err(e) => return Err(Error::io("cannot open", &self.dir, e)),
        };
        match file.try_lock() {
            // Opened before an `endpoints remove` that let go meanwhile.
            Ok(()) if rustix::fs::fstat(&file).is_ok_and(|st| st.st_nlink == 0) => Err(self.gone()),
            Ok(()) => Ok(Some(file)),
            Err(fs::TryLockError::WouldBlock) => Ok(None),
            Err(fs::TryLockError::Error(e)) => Err(Error::io("cannot lock", &self.dir, e)),
        }
    }

    fn gone(&self) -> Error {
        Error::NoEndpoint(format!(
            "no endpoint '{}': it was removed (create it again with: relay endpoints add {})",
            self.name, self.name
        ))
    }

    /// Latest modification time (ms) of the mailbox's subdirectories: when a
    /// message last arrived, was claimed, acked or dead-lettered.
    #[must_use]
    pub fn last_activity(&self) -> u64 {
        ["new", "cur", "failed"]
            .iter()
            .filter_map(|s| fs::metadata(self.sub(s)).ok()?.modified().ok())
            .map(system_time_ms)
            .max()
            .unwrap_or(0)
    }

    /// What `relay endpoints` and `status` show of the mailbox: its counts
    /// and last activity.
    pub fn tally(&self) -> Result<Tally> {
        Ok(Tally {
            new: self.count("new")?,
            cur: self.count("cur")?,
            failed: self.count("failed")?,
            last_activity: self.last_activity(),
        })
    }

    /// Claims up to `max` of the oldest of `ids` (what `list("new")` gave):
    /// renames `new/<id>.json`
    /// to `cur/` (exactly one concurrent claimer wins each) and parses it.
    /// `ranks` gives the priority rank of messages that are not normal (2);
    /// lower ranks are handed out first, FIFO within a rank. Files that are
    /// not envelopes are moved to `failed/` with a sidecar and reported in
    /// `quarantined`, and the next message is tried.
    pub fn claim(
        &self,
        mut ids: Vec<String>,
        max: usize,
        now: u64,
        ranks: &HashMap<String, u8>,
        quarantined: &mut Vec<Quarantined>,
    ) -> Result<Vec<Claimed>> {
        if !ranks.is_empty() {
            ids.sort_by_cached_key(|id| (ranks.get(id).copied().unwrap_or(2), id.clone()));
        }
        let mut claimed = Vec::new();
        for id in ids {
            if claimed.len() >= max {
                break;
            }
            let (from, to) = (self.file("new", &id), self.file("cur", &id));
            match fs::rename(&from, &to) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => continue, // another receiver won
                // A foreign directory (or a file over one) left in new/.
                Err(e) if collides(&e) => {
                    let problem = format!("cannot claim {}: {e}; left in new/", from.display());
                    quarantined.push(Quarantined { id, problem });
                    continue;
                }
                Err(e) => return Err(Error::io("cannot claim", &from, e)),
            }
            // Anything but a regular file of a sane size (a FIFO, a
            // directory, a symlink, a device, 256 MiB) is dead-lettered
            // unread: it can neither hang nor exhaust this receiver.
            let bytes = match home::read_regular(&to, self.cap) {
                Ok(bytes) => bytes,
                Err(home::Unreadable::Missing) => continue,
                Err(home::Unreadable::Io(e)) => return Err(Error::io("cannot read", &to, e)),
                Err(why) => {
                    let limit = matches!(why, home::Unreadable::TooLarge { .. })
                        .then_some(" (a message file may take 6 x maxPayloadBytes + 64 KiB)");
                    let problem = format!("not read: {why}{}", limit.unwrap_or_default());
                    quarantined.push(self.quarantine(id, problem, now)?);
                    continue;
                }
            };
            let parsed = Envelope::parse(&bytes).and_then(|env| {
                if env.id == id {
                    Ok(env)
                } else {
                    Err(format!(
                        "file name '{id}.json' does not match envelope id '{}'",
                        env.id
                    ))
                }
            });
            match parsed {
                Ok(envelope) => claimed.push(Claimed { envelope, bytes }),
                Err(problem) => quarantined.push(self.quarantine(id, problem, now)?),
            }
        }
        Ok(claimed)
    }

    /// Dead-letters claimed file `id` as `malformed`. A foreign entry that
    /// cannot take its place in `failed/` (something else of that name is
    /// there) stays in `cur/`, reported: it must not stop the receiver.
    fn quarantine(&self, id: String, problem: String, now: u64) -> Result<Quarantined> {
        match self.fail(&id, Value::Null, &problem, Code::Malformed, now) {
            Err(Error::Io { what, source }) if collides(&source) => Ok(Quarantined {
                problem: format!("{problem}; left in cur/: {what}: {source}"),
                id,
            }),
            Err(e) => Err(e),
            Ok(_) => Ok(Quarantined { id, problem }),
        }
    }

    /// Makes claims durable (one fsync for any number of claims).
    pub fn sync_claims(&self) -> Result<()> {
        home::sync_dir(&self.sub("cur"))?;
        home::sync_dir(&self.sub("new"))
    }

    /// The relay home this mailbox is in.
    fn root(&self) -> &Path {
        self.dir
            .parent()
            .and_then(Path::parent)
            .unwrap_or(Path::new("."))
    }

    /// Removes a claimed message from `cur/`.
    pub fn ack(&self, id: &str) -> Result<AckOutcome> {
        let path = self.file("cur", id);
        // DorkOS's index gets the row whole if it has none yet.
        let file = crate::store::dorkos::present(self.root())
            .then(|| self.read_json("cur", id))
            .flatten();
        match fs::remove_file(&path) {
            Ok(()) => {
                let done = crate::store::dorkos::Status::Delivered;
                crate::store::dorkos::finished(self.root(), &self.name, id, done, file.as_ref());
                Ok(AckOutcome::Removed)
            }
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(AckOutcome::Missing),
            Err(e) => Err(Error::io("cannot remove", &path, e)),
        }
    }

    /// Writes message `id` into `<sub>/` (through `tmp/`, without fsync: the
    /// caller flushes) unless a file of that name already holds `bytes`,
    /// replacing it otherwise (after a power loss a name can reach the disk
    /// without its data). Whether it wrote.
    pub fn restore(&self, sub: &str, id: &str, bytes: &[u8]) -> Result<bool> {
        if self.read(sub, id).is_ok_and(|b| b == bytes) {
            return Ok(false);
        }
        self.place_over(&file_name(id), bytes, sub, false)?;
        Ok(true)
    }

    /// The envelope at `<sub>/<id>.json`, if it is one.
    #[must_use]
    pub fn read_envelope(&self, sub: &str, id: &str) -> Option<Envelope> {
        self.read(sub, id)
            .ok()
            .and_then(|b| Envelope::parse(&b).ok())
    }

    /// The bytes of `<sub>/<id>.json` if it is a regular file within the
    /// read cap (never a symlink followed, a FIFO waited on, a huge file).
    pub fn read(&self, sub: &str, id: &str) -> std::result::Result<Vec<u8>, home::Unreadable> {
        home::read_regular(&self.file(sub, id), self.cap)
    }

    /// The file `<sub>/<id>.json` as JSON, whatever its shape.
    #[must_use]
    pub fn read_json(&self, sub: &str, id: &str) -> Option<Value> {
        self.read(sub, id)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
    }

    /// The reason sidecar of dead letter `id`, if readable.
    #[must_use]
    pub fn read_reason(&self, id: &str) -> Option<Reason> {
        home::read_regular(&self.reason_file(id), self.cap)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
    }

    /// Moves dead letter `id` back into `new/` (atomic rename, so a
    /// receiver sees it whole), drops its sidecar, and returns its envelope;
    /// `None` if it is no longer in `failed/`. With `rewritten`, that
    /// envelope is written into `new/` instead (durably, through `tmp/`)
    /// and the dead letter removed.
    pub fn requeue(&self, id: &str, rewritten: Option<&Envelope>) -> Result<Option<Envelope>> {
        let Some(env) = self.read_envelope("failed", id) else {
            return Ok(None);
        };
        let from = self.file("failed", id);
        if let Some(new) = rewritten {
            self.place_over(&file_name(id), &new.to_file_bytes()?, "new", true)?;
            match fs::remove_file(&from) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("cannot remove the requeued", &from, e)),
            }
            let _ = fs::remove_file(self.reason_file(id));
            home::sync_dir(&self.sub("failed"))?;
            crate::store::dorkos::requeued(self.root(), &self.name, new);
            return Ok(Some(new.clone()));
        }
        let to = self.file("new", id);
        match fs::rename(&from, &to) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("cannot requeue", &from, e)),
        }
        let _ = fs::remove_file(self.reason_file(id));
        home::sync_dir(&self.sub("new"))?;
        home::sync_dir(&self.sub("failed"))?;
        crate::store::dorkos::requeued(self.root(), &self.name, &env);
        Ok(Some(env))
    }

    /// Gives up a claim: moves `cur/<id>.json` back into `new/` (durably),
    /// for the next consumer. `Ok(false)` if it is no longer in `cur/`.
    pub fn unclaim(&self, id: &str) -> Result<bool> {
        let (from, to) = (self.file("cur", id), self.file("new", id));
        match fs::rename(&from, &to) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(Error::io("cannot give back", &from, e)),
        }
        home::sync_dir(&self.sub("new"))?;
        home::sync_dir(&self.sub("cur"))?;
        Ok(true)
    }

    /// When message `id` was claimed, as far as the Maildir knows: the
    /// change time of `cur/<id>.json` (the rename into `cur/` sets it, as
    /// DorkOS's crash recovery also reads it). `None` if it is not there.
    /// The only time the rename sets: the modification and birth times are
    /// the send's. A later chmod, link or time change moves it to then, so
    /// such a lease is lengthened, never cut short.
    #[must_use]
    pub fn claimed_at(&self, id: &str) -> Option<u64> {
        use std::os::unix::fs::MetadataExt;
        let m = fs::symlink_metadata(self.file("cur", id)).ok()?;
        let secs = u64::try_from(m.ctime()).ok()?;
        let nanos = u64::try_from(m.ctime_nsec()).unwrap_or(0);
        Some(secs.saturating_mul(1000).saturating_add(nanos / 1_000_000))
    }

    /// Gives back a claim whose lease ran out: `cur/<id>.json` is replaced
    /// by `env` (its delivery count raised; written through `tmp/` and
    /// swapped in atomically, so a file acked meanwhile is not brought
    /// back), then moved to `new/`. `Ok(false)` if it left `cur/` first.
    pub fn redeliver(&self, env: &Envelope) -> Result<bool> {
        use rustix::fs::{CWD, RenameFlags};
        let name = file_name(&env.id);
        let (tmp, cur) = (self.sub("tmp").join(&name), self.sub("cur").join(&name));
        let _ = fs::remove_file(&tmp);
        home::write_new_file(&tmp, &env.to_file_bytes()?, true)?;
        let swapped = match rustix::fs::renameat_with(CWD, &tmp, CWD, &cur, RenameFlags::EXCHANGE) {
            // A filesystem without the exchange: replace it (the mailbox
            // lock keeps relay's own acks out meanwhile).
            Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS) if cur.exists() => {
                fs::rename(&tmp, &cur).map_err(|e| {
                    rustix::io::Errno::from_io_error(&e).unwrap_or(rustix::io::Errno::IO)
                })
            }
            other => other,
        };
        let _ = fs::remove_file(&tmp);
        match swapped {
            Ok(()) => self.unclaim(&env.id),
            Err(rustix::io::Errno::NOENT) => Ok(false),
            Err(e) => Err(Error::io("cannot rewrite", &cur, e.into())),
        }
    }

    /// Deletes dead letter `id` and its sidecar.
    pub fn remove_dead_letter(&self, id: &str) -> std::io::Result<()> {
        match fs::remove_file(self.file("failed", id)) {
            Err(e) if e.kind() != ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        match fs::remove_file(self.reason_file(id)) {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(e),
            _ => {
                crate::store::dorkos::removed(self.root(), &self.name, id);
                Ok(())
            }
        }
    }

    /// Dead-letters an unclaimed message past its TTL: claims it (so no
    /// receiver gets it meanwhile) and moves it to `failed/` with a
    /// `ttl_expired` sidecar. Returns false if a receiver got it first.
    pub fn expire(&self, id: &str, reason: &str, now: u64) -> Result<bool> {
        let (from, to) = (self.file("new", id), self.file("cur", id));
        match fs::rename(&from, &to) {
            Ok(()) => self.fail(id, Value::Null, reason, Code::TtlExpired, now),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io("cannot expire", &from, e)),
        }
    }

    /// Whether `<sub>/<id>.json` exists.
    #[must_use]
    pub fn has(&self, sub: &str, id: &str) -> bool {
        fs::symlink_metadata(self.file(sub, id)).is_ok()
    }

    /// Moves a claimed message `cur/` -> `failed/` with its reason
    /// sidecar. The sidecar goes first (written through `tmp/`, fsynced,
    /// renamed into `failed/`, `failed/` fsynced), then the message: a
    /// reader never finds the dead letter without its reason, even after a
    /// crash between the two (which leaves the message claimed in `cur/`
    /// and a sidecar no letter has, which readers ignore and the next
    /// dead-lettering of that id replaces). `envelope` is what goes into
    /// the sidecar (the caller may pass `Null` to re-read it). Returns
    /// `Ok(false)` if the message is not in `cur/`.
    pub fn fail(
        &self,
        id: &str,
        envelope: Value,
        reason: &str,
        code: Code,
        now: u64,
    ) -> Result<bool> {
        let (from, to) = (self.file("cur", id), self.file("failed", id));
        let envelope = if envelope.is_null() {
            match home::read_regular(&from, self.cap) {
                Ok(b) => serde_json::from_slice(&b).unwrap_or(Value::Null),
                Err(home::Unreadable::Missing) => return Ok(false),
                Err(_) => Value::Null,
            }
        } else if self.has("cur", id) {
            envelope
        } else {
            return Ok(false);
        };
        let sidecar = self.write_reason_or_warn(id, envelope.clone(), reason, code, now);
        match fs::rename(&from, &to) {
            Ok(()) => {}
            Err(e) => {
                // Someone else took it first: the sidecar is no one's,
                // unless that someone dead-lettered it too.
                if sidecar && !self.has("failed", id) {
                    let _ = fs::remove_file(self.reason_file(id));
                }
                if e.kind() == ErrorKind::NotFound {
                    return Ok(false);
                }
                return Err(Error::io("cannot dead-letter", &from, e));
            }
        }
        let failed = DorkStatus::Failed;
        crate::store::dorkos::finished(self.root(), &self.name, id, failed, Some(&envelope));
        home::sync_dir(&self.sub("failed"))?;
        home::sync_dir(&self.sub("cur"))?;
        Ok(true)
    }

    /// Dead-letters an envelope that was never delivered: writes it straight
    /// into `failed/` (through `tmp/`), after its reason sidecar (as `fail`).
    pub fn dead_letter(&self, env: &Envelope, reason: &str, code: Code, now: u64) -> Result<()> {
        self.create(&["tmp", "failed"])?;
        let bytes = env.to_file_bytes()?;
        let value = serde_json::to_value(env).unwrap_or(Value::Null);
        let sidecar = self.write_reason_or_warn(&env.id, value, reason, code, now);
        if let Err(e) = self.place(&file_name(&env.id), &bytes, "failed", true, true) {
            if sidecar && !self.has("failed", &env.id) {
                let _ = fs::remove_file(self.reason_file(&env.id));
            }
            return Err(e);
        }
        crate::store::dorkos::dead_lettered(self.root(), &self.name, env);
        Ok(())
    }

    /// `failed/<id>.reason.json`.
    fn reason_file(&self, id: &str) -> PathBuf {
        self.sub("failed").join(format!("{id}{REASON_EXT}"))
    }

    /// `write_reason` for a message about to be moved into `failed/`: it
    /// is dead-lettered whether or not its sidecar can be written (a full
    /// disk), and the reason is also in the index; so a missing sidecar is
    /// a warning. Whether the sidecar was written.
    fn write_reason_or_warn(
        &self,
        id: &str,
        envelope: Value,
        reason: &str,
        code: Code,
        now: u64,
    ) -> bool {
        match self.write_reason(id, envelope, reason, code, now) {
            Ok(()) => true,
            Err(e) => {
                crate::output::warn(&format!(
                    "message '{id}' of '{}' is dead-lettered ({code}), without its reason sidecar: {e}",
                    self.name
                ));
                false
            }
        }
    }

    fn write_reason(
        &self,
        id: &str,
        envelope: Value,
        reason: &str,
        code: Code,
        now: u64,
    ) -> Result<()> {
        let sidecar = Reason {
            envelope,
            reason: reason.to_string(),
            failed_at: iso8601(now),
            endpoint_hash: self.name.clone(),
            code: Some(code.to_string()),
        };
        let bytes = serde_json::to_vec_pretty(&sidecar)
            .map_err(|e| Error::Data(format!("cannot serialize reason for {id}: {e}")))?;
        self.place_over(&format!("{id}{REASON_EXT}"), &bytes, "failed", true)
    }
}

/// Whether a rename failed because a directory met a file of the same name
/// (or a non-empty directory): only foreign entries do that.
fn collides(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::IsADirectory | ErrorKind::NotADirectory | ErrorKind::DirectoryNotEmpty
    )
}

/// The file name of message `id`.
fn file_name(id: &str) -> String {
    format!("{id}{MSG_EXT}")
}

/// The id of a message file name, if it is one: `<id>.json`, not a sidecar,
/// not a dot-file.
#[must_use]
pub fn message_id(file_name: &str) -> Option<&str> {
    if file_name.starts_with('.') || file_name.ends_with(REASON_EXT) {
        return None;
    }
    file_name.strip_suffix(MSG_EXT).filter(|s| !s.is_empty())
}

/// Checks a message id given on the command line can only name a file
/// directly inside a mailbox subdirectory.
pub fn validate_id(id: &str) -> Result<()> {
    if id.is_empty() || id.starts_with('.') || id.contains('/') || id.chars().any(char::is_control)
    {
        return Err(Error::Data(format!(
            "invalid message id '{}': expected an id as printed by send or recv (e.g. a ULID)",
            id.escape_debug()
        )));
    }
    Ok(())
}

/// Registered endpoints (directories under `mailboxes/` named by a literal
/// subject and holding `new/`), sorted.
pub fn list_endpoints(home: &Home) -> Result<Vec<String>> {
    let mut names: Vec<String> = mailbox_dir_names(home)?
        .into_iter()
        .filter(|n| {
            subject::validate_subject(n, "endpoint").is_ok() && Mailbox::at(home, n).is_endpoint()
        })
        .collect();
    names.sort();
    Ok(names)
}

/// The entries of `dir`; none if it does not exist.
fn entries(dir: &Path) -> Result<Vec<fs::DirEntry>> {
    match fs::read_dir(dir) {
        Ok(rd) => match rd.collect::<std::io::Result<Vec<_>>>() {
            Ok(v) => Ok(v),
            // Removed while it was read (a mailbox removed meanwhile): empty.
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(Error::io("cannot list", dir, e)),
        },
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(Error::io("cannot list", dir, e)),
    }
}

/// A mailbox's counts of messages (`Mailbox::count`) and its last activity
/// (`Mailbox::last_activity`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// In `new/`.
    pub new: usize,
    /// In `cur/`.
    pub cur: usize,
    /// In `failed/`.
    pub failed: usize,
    /// Latest modification (ms) of `new/`, `cur/` or `failed/`; 0 if none.
    pub last_activity: u64,
}

/// Every directory name under `mailboxes/` (endpoints, dead-letter-only
/// directories, directories made by other programs).
pub fn mailbox_dir_names(home: &Home) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in entries(&home.mailboxes())? {
        if entry.file_type().is_ok_and(|t| t.is_dir())
            && let Ok(name) = entry.file_name().into_string()
        {
            names.push(name);
        }
    }
    Ok(names)
}

/// A name among `names` that differs from `name` only in case: two such
/// mailboxes would collide on a case-insensitive filesystem.
pub fn case_twin<'a>(
    name: &str,
    mut names: impl Iterator<Item = &'a String>,
) -> Option<&'a String> {
    let lower = name.to_lowercase();
    names.find(|n| *n != name && n.to_lowercase() == lower)
}

/// "known endpoints: a, b" or the command that creates one.
#[must_use]
pub fn known_endpoints_hint(home: &Home) -> String {
    match list_endpoints(home) {
        Ok(v) if !v.is_empty() => format!("known endpoints: {}", v.join(", ")),
        _ => "no endpoints exist yet; create one with: relay endpoints add SUBJECT".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_file_names() {
        assert_eq!(message_id("01ABC.json"), Some("01ABC"));
        assert_eq!(message_id("01ABC.reason.json"), None);
        assert_eq!(message_id(".hidden.json"), None);
        assert_eq!(message_id("README.txt"), None);
        assert_eq!(message_id(".json"), None);
    }

    /// A mailbox removed before its lock is taken is gone (no endpoint,
    /// 69), whether waited for or only tried, never an I/O error (74).
    #[test]
    fn locking_a_removed_mailbox_says_it_is_gone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = Home::resolve(Some(dir.path().to_path_buf())).expect("home");
        let mb = Mailbox::at(&home, "agent.gone");
        for e in [mb.lock().err(), mb.try_lock().err()] {
            let e = e.expect("an error");
            assert!(matches!(e, Error::NoEndpoint(_)), "{e:?}");
            assert!(e.to_string().contains("was removed"), "{e}");
        }
    }

    #[test]
    fn ids_cannot_escape() {
        assert!(validate_id("01JZ0000000000000000000000").is_ok());
        for bad in ["", "..", "../x", "a/b", ".x", "a\0b"] {
            assert!(validate_id(bad).is_err(), "{bad}");
        }
    }
}
