//! Mailbox counts kept between calls by a long-running process (`relay
//! serve`), so a status or endpoint listing reads only the mailboxes that
//! changed since the last one, not all of them (counting 200 idle
//! mailboxes is some 3,000 system calls).
//!
//! Kept only while inotify vouches for it: a watch on `mailboxes/`, on
//! every directory in it and on each endpoint's `new/`, `cur/` and
//! `failed/`, added before the directory is read. Every change a tally
//! depends on raises an event there: a name added, removed or renamed,
//! and the directory's times set (the last activity). The kernel queues an
//! event before the change's system call returns, and every call drains
//! the queue first, so a change finished before the call is always seen:
//! an event on a mailbox forgets its counts (one on the mailbox directory
//! or on `mailboxes/` also the list of endpoints), a lost event (queue
//! overflow) or an unreadable queue forgets everything, and a mailbox
//! whose watches cannot all be added (the watch limit) is counted afresh
//! on every call, as is everything when inotify is unavailable. The
//! answers are those of `maildir::list_endpoints` and `Mailbox::tally`
//! at the time of the call. (inotify sees the changes of this machine: a
//! home shared over a network filesystem with writers elsewhere is not
//! supported anyway, since the index is SQLite in WAL mode.)

use std::collections::HashMap;
use std::mem::MaybeUninit;
use std::os::unix::fs::MetadataExt;
use std::sync::{Mutex, PoisonError};

use rustix::fd::OwnedFd;
use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};
use rustix::io::Errno;

use crate::error::Result;
use crate::home::Home;
use crate::maildir::{self, Mailbox, Tally};

/// The subdirectories a tally reads.
const COUNTED: [&str; 3] = ["new", "cur", "failed"];

/// What a watch is on.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Watched {
    /// `mailboxes/`.
    Root,
    /// A directory in it: whether it is an endpoint (its `new/`), and its
    /// counted subdirectories.
    Mailbox(String),
    /// A counted subdirectory of this mailbox.
    Sub(String),
}

/// Counts kept between calls; see the module.
pub struct Census {
    inner: Mutex<Option<Inner>>,
}

struct Inner {
    fd: OwnedFd,
    /// `mailboxes/` as watched (device, inode): another directory put in
    /// its place forgets everything.
    root: Option<(u64, u64)>,
    /// The endpoints as last listed, while no event says otherwise.
    names: Option<Vec<String>>,
    /// Tallies no event has invalidated since they were taken.
    tallies: HashMap<String, Tally>,
    /// What each watch stands for.
    watches: HashMap<i32, Vec<Watched>>,
}

impl Default for Census {
    fn default() -> Self {
        Self::new()
    }
}

impl Census {
    /// A census that keeps nothing yet; without inotify it never keeps
    /// anything.
    #[must_use]
    pub fn new() -> Self {
        let inner = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK)
            .ok()
            .map(|fd| Inner {
                fd,
                root: None,
                names: None,
                tallies: HashMap::new(),
                watches: HashMap::new(),
            });
        Census {
            inner: Mutex::new(inner),
        }
    }

    /// The endpoints of `home` (as `maildir::list_endpoints`) with their
    /// tallies (as `Mailbox::tally`).
    pub fn endpoints(&self, home: &Home) -> Result<Vec<(String, Tally)>> {
        let mut guard = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(inner) = guard.as_mut() else {
            return maildir::list_endpoints(home)?
                .into_iter()
                .map(|name| {
                    let tally = Mailbox::at(home, &name).tally()?;
                    Ok((name, tally))
                })
                .collect();
        };
        inner.drain();
        inner.watch_root(home);
        let names = match &inner.names {
            Some(names) => names.clone(),
            None => inner.list(home)?,
        };
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let tally = match inner.tallies.get(&name) {
                Some(t) => *t,
                None => inner.tally(home, &name)?,
            };
            out.push((name, tally));
        }
        Ok(out)
    }
}

impl Inner {
    fn forget_all(&mut self) {
        self.names = None;
        self.tallies.clear();
    }

    /// Reads every queued event and forgets what they touch.
    fn drain(&mut self) {
        let mut buf = [MaybeUninit::<u8>::uninit(); 16 * 1024];
        let mut reader = inotify::Reader::new(&self.fd, &mut buf);
        let mut lost = false;
        loop {
            let e = match reader.next() {
                Ok(e) => e,
                Err(Errno::AGAIN) => break,
                Err(Errno::INTR) => continue,
                Err(_) => {
                    lost = true;
                    break;
                }
            };
            if e.events().contains(ReadFlags::QUEUE_OVERFLOW) {
                lost = true;
                continue;
            }
            let meanings = if e.events().contains(ReadFlags::IGNORED) {
                self.watches.remove(&e.wd()).unwrap_or_default()
            } else {
                self.watches.get(&e.wd()).cloned().unwrap_or_default()
            };
            for watched in meanings {
                match watched {
                    Watched::Root => {
                        self.names = None;
                        match e.file_name().and_then(|n| n.to_str().ok()) {
                            Some(n) => {
                                self.tallies.remove(n);
                            }
                            // `mailboxes/` itself moved, was deleted or
                            // lost its watch.
                            None => {
                                self.root = None;
                                self.tallies.clear();
                            }
                        }
                    }
                    Watched::Mailbox(m) => {
                        self.names = None;
                        self.tallies.remove(&m);
                    }
                    Watched::Sub(m) => {
                        self.tallies.remove(&m);
                    }
                }
            }
        }
        if lost {
            self.forget_all();
        }
    }

    /// Watches `mailboxes/` unless it is already watched (and still the
    /// same directory).
    fn watch_root(&mut self, home: &Home) {
        let dir = home.mailboxes();
        let now = std::fs::metadata(&dir).ok().map(|m| (m.dev(), m.ino()));
        if now.is_some() && now == self.root {
            return;
        }
        self.forget_all();
        self.root = None;
        if let Some(wd) = self.add(&dir, Watched::Root) {
            // Read after the watch is in place: what changes later is seen.
            self.root = std::fs::metadata(&dir)
                .ok()
                .map(|m| (m.dev(), m.ino()))
                .filter(|_| self.watches.contains_key(&wd));
        }
    }

    /// Adds a watch on `path` for `what`; its descriptor, unless it cannot
    /// be added.
    fn add(&mut self, path: &std::path::Path, what: Watched) -> Option<i32> {
        let flags = WatchFlags::CREATE
            | WatchFlags::DELETE
            | WatchFlags::MOVED_FROM
            | WatchFlags::MOVED_TO
            // A time set on the directory: `MODIFY` when only its mtime
            // is set, `ATTRIB` when both times are.
            | WatchFlags::MODIFY
            | WatchFlags::ATTRIB
            | WatchFlags::DELETE_SELF
            | WatchFlags::MOVE_SELF
            | WatchFlags::ONLYDIR;
        let wd = inotify::add_watch(&self.fd, path, flags).ok()?;
        // One directory may stand for several things (renamed, or reached
        // through a symlink): an event on it forgets them all.
        let meanings = self.watches.entry(wd).or_default();
        if !meanings.contains(&what) {
            meanings.push(what);
        }
        Some(wd)
    }

    /// `maildir::list_endpoints`, each directory watched before it is
    /// looked at; kept if every watch holds.
    fn list(&mut self, home: &Home) -> Result<Vec<String>> {
        let mut kept = self.root.is_some();
        let mut names = Vec::new();
        for name in maildir::mailbox_dir_names(home)? {
            let mb = Mailbox::at(home, &name);
            kept &= self.add(mb.dir(), Watched::Mailbox(name.clone())).is_some();
            if crate::subject::validate_subject(&name, "endpoint").is_ok() && mb.is_endpoint() {
                names.push(name);
            }
        }
        names.sort();
        if kept {
            self.names = Some(names.clone());
        }
        Ok(names)
    }

    /// `Mailbox::tally` of `name`, its directories watched first; kept if
    /// every watch holds (a subdirectory missing is seen appearing by the
    /// mailbox directory's watch).
    fn tally(&mut self, home: &Home, name: &str) -> Result<Tally> {
        let mb = Mailbox::at(home, name);
        let mut kept = self.root.is_some()
            && self
                .add(mb.dir(), Watched::Mailbox(name.to_string()))
                .is_some();
        for sub in COUNTED {
            let path = mb.sub(sub);
            kept &= self.add(&path, Watched::Sub(name.to_string())).is_some()
                || std::fs::symlink_metadata(&path)
                    .is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound);
        }
        let tally = mb.tally()?;
        if kept {
            self.tallies.insert(name.to_string(), tally);
        }
        Ok(tally)
    }
}
