//! Room to drain a full disk. A full disk refuses every write, and the
//! commands that free space (recv, ack, nack, gc, dlq purge) must still
//! write the index to record what they do. So every command that opens the
//! index keeps `reserve` in the home, a file of `BYTES` allocated bytes,
//! while the filesystem has room, and deletes it once the filesystem is
//! nearly full (space or inodes): the index then has that much room for
//! the commands that free more. It is made again once there is plenty of
//! room. Sends, for their part, leave that much free: a send is refused
//! while its filesystem has less (`send_room`, from the `fstatfs` the
//! depth check makes anyway), so the room a released reserve gives back is
//! left to the commands that free space.

use std::path::Path;

use rustix::fs::{Mode, OFlags};

use crate::home::FILE_MODE;

/// The reserve's name in the home.
pub const FILE: &str = "reserve";
/// Its size.
pub const BYTES: u64 = 512 << 10;
/// Free inodes below which the reserve goes (a nack's sidecar, a notice
/// need a few).
const MIN_INODES: u64 = 16;

/// Deletes the reserve in `root` (the relay home) when its filesystem is
/// nearly full, or makes it when there is room (twice its size) and
/// it is missing. Best effort: it never fails a command.
pub fn balance(root: &Path) {
    let Ok(fs) = rustix::fs::statvfs(root) else {
        return;
    };
    let free = fs.f_bavail.saturating_mul(fs.f_frsize);
    // Filesystems without inode counts report 0 files.
    let inodes_short = fs.f_files > 0 && fs.f_favail < MIN_INODES;
    let path = root.join(FILE);
    if free < BYTES || inodes_short {
        if std::fs::remove_file(&path).is_ok() {
            crate::output::warn(&format!(
                "the disk holding {} is nearly full ({free} bytes, {} inodes free): released relay's reserve so the index can record what frees space; free more with relay recv + ack, relay gc or relay dlq purge",
                root.display(),
                fs.f_favail
            ));
        }
    } else if free >= 2 * BYTES && (fs.f_files == 0 || fs.f_favail >= 4 * MIN_INODES) {
        make(&path);
    }
}

/// `None` if a send may write on the filesystem `fs` describes (`at`
/// names it), else why not: it leaves `BYTES` and a few inodes free.
#[must_use]
// The counts' types vary by platform (u64 on Linux, narrower elsewhere).
#[allow(clippy::useless_conversion)]
pub fn send_room(fs: &rustix::fs::StatFs, at: &Path) -> Option<String> {
    let free = u64::try_from(fs.f_bavail)
        .unwrap_or(0)
        .saturating_mul(u64::try_from(fs.f_bsize).unwrap_or(0));
    let files = u64::try_from(fs.f_files).unwrap_or(0);
    let inodes = u64::try_from(fs.f_ffree).unwrap_or(0);
    if free >= BYTES && (files == 0 || inodes >= MIN_INODES) {
        return None;
    }
    Some(format!(
        "the disk holding {} is nearly full ({free} bytes, {inodes} inodes free; sends leave {} KiB for the commands that free space): nothing was sent; free space (relay recv + ack, relay gc, relay dlq purge) and retry",
        at.display(),
        BYTES / 1024
    ))
}

/// Creates the reserve (exclusively, never through a symlink) and
/// allocates its blocks; a reserve that cannot be allocated whole is
/// removed again.
fn make(path: &Path) {
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let Ok(fd) = rustix::fs::open(path, flags, Mode::from_raw_mode(FILE_MODE)) else {
        return; // there already, or no room: nothing to do now
    };
    let allocated = rustix::fs::fallocate(&fd, rustix::fs::FallocateFlags::empty(), 0, BYTES)
        .is_ok()
        || write_zeros(std::fs::File::from(fd));
    if !allocated {
        let _ = std::fs::remove_file(path);
    }
}

/// Fills the file with `BYTES` zeros, where `fallocate` is not supported
/// (a sparse file would reserve nothing).
fn write_zeros(mut f: std::fs::File) -> bool {
    use std::io::Write;
    let block = vec![0u8; 64 * 1024];
    (0..BYTES / block.len() as u64).all(|_| f.write_all(&block).is_ok())
}
