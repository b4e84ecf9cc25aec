//! Where the logs live: the shared `journal` and the batch logs under
//! `batches/` (see the map in `store`).

use std::fs;
use std::path::{Path, PathBuf};

/// `batches/` in the home at `root`.
#[must_use]
pub fn batches_dir(root: &Path) -> PathBuf {
    root.join("batches")
}

/// Whether any batch log is in `root` (a relay home): while one is, a
/// replay could follow a power loss.
#[must_use]
pub fn pending(root: &Path) -> bool {
    fs::read_dir(batches_dir(root)).is_ok_and(|mut rd| {
        rd.any(|e| e.is_ok_and(|e| e.path().extension().is_some_and(|x| x == "log")))
    })
}
