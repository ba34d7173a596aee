//! The store's footprint on the file system: a private data directory,
//! and how many file descriptors the store may hold.

use std::path::Path;

use chat_core::{Error, Result};

use super::{EmbeddedOptions, BACKEND};

/// Files fjall opens beside its descriptor table: the active journal,
/// segments being written by flushes and compactions, segments read by a
/// compaction, recovery's journal readers, manifests and partition
/// markers written now and then.
const FILES_BESIDE_TABLE: usize = 64;

impl EmbeddedOptions {
    /// Options with a descriptor table of `n` files (at least 2).
    pub fn with_max_open_files(mut self, n: usize) -> Self {
        self.max_open_files = n.max(2);
        self
    }

    /// The most file descriptors a store opened with these options holds
    /// at once: what a server must leave free for it under its open-file
    /// limit.
    pub fn file_budget(&self) -> usize {
        self.max_open_files + FILES_BESIDE_TABLE
    }
}

/// Creates the data directory (and missing parents) readable by its owner
/// only (0700): it holds messages and password hashes. An existing
/// directory is left as it is, with a warning if others may read it.
pub(super) fn private_dir(path: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    match std::fs::metadata(path) {
        Ok(meta) => {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                tracing::warn!(
                    path = %path.display(),
                    mode = format!("{mode:o}"),
                    "the data directory is readable by other users; chmod 700 it"
                );
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .map_err(|e| Error::backend(BACKEND, format!("cannot create {}: {e}", path.display()))),
        Err(e) => Err(Error::backend(
            BACKEND,
            format!("cannot read {}: {e}", path.display()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::super::EmbeddedStore;
    use super::*;

    #[test]
    fn a_new_data_directory_is_private_and_the_budget_covers_the_table() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("a/b/store");
        let options = EmbeddedOptions::default().with_max_open_files(16);
        let store = EmbeddedStore::open_with(&path, options.clone()).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        assert_eq!(options.file_budget(), 16 + FILES_BESIDE_TABLE);
        assert_eq!(
            EmbeddedOptions::default()
                .with_max_open_files(0)
                .max_open_files,
            2
        );
        drop(store);
        // Reopening an existing directory leaves its mode alone.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o750)).unwrap();
        drop(EmbeddedStore::open(&path).unwrap());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o750);
    }
}
