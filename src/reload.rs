//! Files that are re-read when they change (the reviewer token, the serving certificate).
//!
//! Responsible for: telling a rewritten file apart from the one read before, cheaply
//! enough to ask on every use. The kubelet and cert-manager replace files by swapping a
//! symlink or renaming a new file in place, so the inode changes; an in-place rewrite
//! changes the size or the modification time.

use std::io;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::time::SystemTime;

/// What identifies one version of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    modified: Option<SystemTime>,
    inode: u64,
    len: u64,
}

impl Stamp {
    /// The stamp of the file at `path` now (following symlinks).
    pub(crate) fn of(path: &Path) -> io::Result<Stamp> {
        let m = std::fs::metadata(path)?;
        Ok(Stamp {
            modified: m.modified().ok(),
            inode: m.ino(),
            len: m.len(),
        })
    }
}
