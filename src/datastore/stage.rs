//! Staged values: the write path for large values written piecewise.
//!
//! A [`Staged`] value is a file that the writer fills at random offsets (`pwrite`), can read back
//! (`pread`), truncate and extend, and finally hands to the store with
//! [`Datastore::commit_staged`](super::Datastore::commit_staged). A store whose values are files
//! (flatfs) stages in a named file next to its data and commits with one `rename`; other stores
//! stage in an unlinked temporary file and copy it in on commit. Dropping an uncommitted staged
//! value discards it and removes its file.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::error::{Error, Result};

/// How a staging area starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StageInit {
    /// Empty (an `O_TRUNC` open, or a new file).
    Empty,
    /// A copy of the key's current value (empty if the key has none).
    CopyCurrent,
}

/// A value being written. See the module documentation.
#[derive(Debug)]
pub struct Staged {
    file: File,
    /// The staging file's name while it still exists on disk; `None` for unlinked files.
    path: Option<TempPath>,
}

/// A path that is removed when dropped, unless [`TempPath::keep`] takes it.
#[derive(Debug)]
struct TempPath(Option<PathBuf>);

impl TempPath {
    fn keep(mut self) -> PathBuf {
        self.0.take().unwrap_or_default()
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        if let Some(path) = self.0.take()
            && let Err(e) = std::fs::remove_file(&path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            log::warn!("could not remove staging file {}: {e}", path.display());
        }
    }
}

impl Staged {
    /// A staging file in `dir` that is unlinked at once, so nothing is left behind by a crash.
    pub fn anonymous(dir: &Path) -> Result<Staged> {
        let (file, path) = create_unique(dir, "stage")?;
        std::fs::remove_file(&path)
            .map_err(|e| Error::io(format!("unlinking staging file {}", path.display()), e))?;
        Ok(Staged { file, path: None })
    }

    /// Wraps a named staging file that a file-backed store will rename into place. The file is
    /// removed if the staged value is dropped without being committed.
    pub fn named(file: File, path: PathBuf) -> Staged {
        Staged {
            file,
            path: Some(TempPath(Some(path))),
        }
    }

    /// A second handle on the same bytes that outlives this one's commit: it shares the open
    /// file (not its name), so whatever a store does with the name (rename it into place, remove
    /// it after a failure), the bytes stay readable through the copy until it is dropped. The
    /// filesystem keeps one across each commit, so a failed commit loses nothing.
    pub fn try_clone_detached(&self) -> Result<Staged> {
        let file = self
            .file
            .try_clone()
            .map_err(|e| Error::io("duplicating a staging file handle", e))?;
        Ok(Staged { file, path: None })
    }

    /// The staging file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The staging file's path, for stores that commit by rename.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_ref().and_then(|p| p.0.as_deref())
    }

    /// Hands the file and its path to the store committing it; the staged value no longer
    /// removes the file when dropped.
    pub fn into_parts(self) -> (File, Option<PathBuf>) {
        (self.file, self.path.map(TempPath::keep))
    }

    /// The current length in bytes.
    pub fn len(&self) -> Result<u64> {
        self.file
            .metadata()
            .map(|m| m.len())
            .map_err(|e| Error::io("reading staging file length", e))
    }

    /// Whether the staged value is empty.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Writes all of `data` at `offset`, extending the file (with a hole) if needed.
    pub fn write_all_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.file
            .write_all_at(data, offset)
            .map_err(|e| Error::io("writing staging file", e))
    }

    /// Reads into `buf` from `offset`; returns the count, short only at the end.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let mut done = 0;
        while done < buf.len() {
            match self.file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io("reading staging file", e)),
            }
        }
        Ok(done)
    }

    /// Truncates or extends (with a hole) to `len` bytes.
    pub fn set_len(&self, len: u64) -> Result<()> {
        self.file
            .set_len(len)
            .map_err(|e| Error::io("resizing staging file", e))
    }

    /// The whole staged value.
    pub fn read_all(&self) -> Result<Vec<u8>> {
        let len = usize::try_from(self.len()?).map_err(|_| {
            Error::new(
                super::ErrorKind::InvalidArgument,
                "staged value too large for memory",
            )
        })?;
        let mut buf = vec![0u8; len];
        let n = self.read_at(0, &mut buf)?;
        buf.truncate(n);
        Ok(buf)
    }

    /// Flushes the staging file's data to stable storage.
    pub fn sync_data(&self) -> Result<()> {
        self.file
            .sync_data()
            .map_err(|e| Error::io("syncing staging file", e))
    }
}

/// Creates a new file `dir/<prefix>-<random>` with mode 0600 and `O_EXCL`, retrying on a name
/// clash. Returns the open file and its path.
pub fn create_unique(dir: &Path, prefix: &str) -> Result<(File, PathBuf)> {
    for _ in 0..16 {
        let mut bytes = [0u8; 8];
        super::key::fill_random(&mut bytes);
        let n = u64::from_le_bytes(bytes);
        let path = dir.join(format!("{prefix}-{n}"));
        match OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(f) => return Ok((f, path)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(Error::io(
                    format!("creating a temporary file in {}", dir.display()),
                    e,
                ));
            }
        }
    }
    Err(Error::new(
        super::ErrorKind::Io,
        format!("could not find a free temporary name in {}", dir.display()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_writes_read_back_with_holes_as_zeros() {
        let dir = std::env::temp_dir();
        let s = Staged::anonymous(&dir).unwrap();
        s.write_all_at(10, b"abc").unwrap();
        assert_eq!(s.len().unwrap(), 13);
        let all = s.read_all().unwrap();
        assert_eq!(&all[..10], &[0u8; 10]);
        assert_eq!(&all[10..], b"abc");
        s.set_len(11).unwrap();
        assert_eq!(s.read_all().unwrap().len(), 11);
    }

    #[test]
    fn dropping_a_named_stage_removes_its_file() {
        let dir = std::env::temp_dir();
        let (f, p) = create_unique(&dir, "dsfs-test").unwrap();
        let s = Staged::named(f, p.clone());
        assert!(p.exists());
        drop(s);
        assert!(!p.exists());
    }

    #[test]
    fn into_parts_keeps_the_file() {
        let dir = std::env::temp_dir();
        let (f, p) = create_unique(&dir, "dsfs-test").unwrap();
        let s = Staged::named(f, p.clone());
        let (_f, path) = s.into_parts();
        assert_eq!(path.as_deref(), Some(p.as_path()));
        assert!(p.exists());
        std::fs::remove_file(p).unwrap();
    }
}
