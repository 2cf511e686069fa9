//! Reads, writes and the commit of staged writes.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::ipfs;
use super::open::{InodeState, OpenInode};
use super::types::{Attr, FileKind, Ino, Opened};
use super::{DsFs, FsError, FsResult};
use crate::datastore::{Datastore, Key, StageInit, Staged};
use crate::index::node::Timestamp;
use crate::index::{Index, IndexErrorKind};

/// Files smaller than this are not offered to the kernel for passthrough: their reads go
/// through the page cache, which `FOPEN_KEEP_CACHE` keeps across opens, so reading an
/// unchanged small file again costs no READ, where passthrough costs the daemon a file open,
/// two ioctls and the kernel a backing file per open (see `docs/SEMANTICS.md`).
pub const PASSTHROUGH_MIN_SIZE: u64 = 64 << 10;

impl DsFs {
    /// Opens inode `ino` with open(2) `flags`.
    pub fn open(&self, ino: u64, flags: i32) -> FsResult<Opened> {
        self.open_with_attr(ino, flags).map(|(o, _)| o)
    }

    /// [`DsFs::open`], also returning the file's attributes as the open found them (so the
    /// caller need not read them again).
    pub fn open_with_attr(&self, ino: u64, flags: i32) -> FsResult<(Opened, Attr)> {
        if ipfs::is_virtual(ino) {
            let attr = self.virtual_getattr(ino)?;
            return Ok((self.virtual_open(ino, flags)?, attr));
        }
        let _below = self.subtrees.shared(&self.index, &[Ino(ino).node()])?;
        let quiet = self.index.write_mark();
        let attr = self.getattr(ino)?;
        match attr.kind {
            FileKind::Dir => return Err(FsError::IsDir),
            FileKind::Symlink
            | FileKind::NamedPipe
            | FileKind::CharDevice
            | FileKind::BlockDevice
            | FileKind::Socket => {
                // The kernel opens these itself; FUSE never asks.
                return Err(FsError::Invalid("open of a non-regular file".into()));
            }
            FileKind::File => {}
        }
        let acc = flags & libc::O_ACCMODE;
        let writing = acc == libc::O_WRONLY || acc == libc::O_RDWR;
        if (writing || flags & libc::O_TRUNC != 0) && self.options.read_only {
            return Err(FsError::ReadOnly);
        }
        let key = self.key_of(ino)?;
        #[cfg(test)]
        if let Some((entered, release)) = self.open_gate.lock().take() {
            let _ = entered.send(());
            let _ = release.recv();
        }
        let inode = self.open_inode(ino, key.clone())?;
        // An unlink decides inside its index transaction whether the file is open (then it
        // keeps a private copy for the handles; else it deletes the value). One whose check
        // ran before the line above and whose commit came after the reads above would remove
        // the file under this open, whose close would then write the value back under no name.
        // If any index write overlapped, wait for it to end and look again.
        if quiet.is_none() || self.index.write_mark() != quiet {
            self.index.wait_for_writes();
            if let Err(e) = self.index.node(Ino(ino).node()) {
                self.forget_open(ino, &inode);
                return Err(e.into());
            }
        }
        let mut backing = None;
        {
            let mut st = inode.state.write();
            if flags & libc::O_TRUNC != 0 && writing {
                match &st.staged {
                    Some(s) => s.set_len(0)?,
                    None => st.staged = Some(self.backend.stage(&key, StageInit::Empty)?),
                }
                st.touch();
            } else if !writing
                && self.options.passthrough
                && self.file_backed
                && st.bytes().is_none()
                && inode.writers.load(Ordering::Relaxed) == 0
                && !Ino(ino).is_dir_value()
                && attr.size >= PASSTHROUGH_MIN_SIZE
            {
                // Nobody is writing, nor has a handle open that could (the close of another
                // handle may have committed their writes so far, and their next ones would not
                // reach the committed file): the kernel may read it directly.
                match self.backend.open_backing(&st.key) {
                    Ok(f) => backing = f,
                    Err(e) => log::debug!("no passthrough for {}: {e}", st.key),
                }
            }
        }
        let fh = self.add_handle(ino, inode, flags);
        Ok((Opened { fh, backing }, attr))
    }

    /// Reads up to `size` bytes at `offset` through handle `fh`.
    pub fn read(&self, fh: u64, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        if ipfs::is_virtual(fh) {
            return self.virtual_read(fh, offset, size);
        }
        let h = self.handle(fh)?;
        let mut buf = vec![0u8; size as usize];
        let mut tries = 0;
        let n = loop {
            let key = {
                let st = h.inode.state.read();
                match st.bytes() {
                    Some(staged) => break staged.read_at(offset, &mut buf)?,
                    None => st.key.clone(),
                }
            };
            // The store is read without the inode's lock, so that a slow read does not stall
            // the file's other users.
            match self.backend.read_at(&key, offset, &mut buf) {
                Ok(n) => break n,
                Err(e) if e.is_not_found() => {
                    // A rename moves the value with the inode locked and re-keys the inode
                    // before unlocking: once the lock is ours again, a changed key means the
                    // value moved under us, so read it again at its new key.
                    tries += 1;
                    if tries < 64 && self.key_moved(h.ino, &h.inode, &key)? {
                        continue;
                    }
                    // An empty file created but not yet committed elsewhere.
                    if self.index.value_size(&key)? == Some(0) {
                        break 0;
                    }
                    // Deleted underneath by another program: the file is gone.
                    if self.store.follows() {
                        let listed = self.index.value_size(&key)?.unwrap_or(0);
                        if self.store.recheck_key(&key, listed)?.is_none() {
                            return Err(FsError::NotFound);
                        }
                    }
                    return Err(FsError::store(e));
                }
                Err(e) => return Err(FsError::store(e)),
            }
        };
        buf.truncate(n);
        Ok(buf)
    }

    /// Whether a read of an open inode that found no value at `key` should be tried again:
    /// the value moved since (a rename, or staged writes now hold it), or it moved away and
    /// back (two renames) so the index names a value there again. Brings the inode's key up
    /// to date from the index.
    pub(super) fn key_moved(&self, ino: u64, inode: &OpenInode, key: &Key) -> FsResult<bool> {
        let mut st = inode.state.write();
        if st.bytes().is_some() || st.key != *key {
            return Ok(true);
        }
        if st.unlinked {
            return Ok(false);
        }
        match self.index.key_of(Ino(ino).node()) {
            Ok(current) if current != *key => {
                st.key = current;
                Ok(true)
            }
            Ok(_) => Ok(self.index.value_size(key)?.is_some_and(|size| size > 0)),
            Err(e) if e.kind() == IndexErrorKind::NotFound => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Ensures the inode has a staging area seeded with its current value: the store's, or
    /// (while a commit is writing it) the committing bytes, as an overlay over them.
    pub(super) fn ensure_staged<'a>(&self, st: &'a mut InodeState) -> FsResult<&'a Staged> {
        if st.staged.is_none() {
            st.staged = Some(match &st.committing {
                Some(below) => self
                    .backend
                    .stage(&st.key, StageInit::Empty)?
                    .layered_over(below.clone())?,
                None => self.backend.stage(&st.key, StageInit::CopyCurrent)?,
            });
        }
        st.staged
            .as_ref()
            .ok_or_else(|| FsError::Io("staging vanished".into()))
    }

    /// Writes `data` at `offset` (at the end for `O_APPEND` handles); returns the count.
    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> FsResult<u32> {
        self.write_as(fh, offset, data, false)
    }

    /// [`DsFs::write`]; `direct`: the client wrote with `O_DIRECT`, so aligned ranges bypass
    /// the staging file's page cache too.
    pub fn write_as(&self, fh: u64, offset: u64, data: &[u8], direct: bool) -> FsResult<u32> {
        self.refuse_virtual(fh)?;
        let h = self.handle(fh)?;
        if !h.writable {
            return Err(FsError::BadHandle);
        }
        self.check_room_for(data.len() as u64)?;
        let put = |staged: &Staged, at: u64| {
            if direct {
                staged.write_all_at_direct(at, data)
            } else {
                staged.write_all_at(at, data)
            }
        };
        if !h.append {
            // The common case: the file is staged already, and its writers share the lock (the
            // staged value orders them), so they neither wait for each other nor for a commit.
            let st = h.inode.state.read();
            if let Some(staged) = &st.staged {
                put(staged, offset)?;
                st.touch();
                return Ok(data.len() as u32);
            }
        }
        let mut st = h.inode.state.write();
        let staged = self.ensure_staged(&mut st)?;
        let at = if h.append { staged.len()? } else { offset };
        put(staged, at)?;
        st.touch();
        Ok(data.len() as u32)
    }

    /// Commits the inode's staged bytes, if any changed, to the store and the index. A failed
    /// commit keeps the staged bytes and leaves the file dirty, so the next flush, fsync or close
    /// tries again and reports the failure until a commit succeeds.
    ///
    /// The state lock is not held while the store and the index are written: the staged value
    /// is taken out (readers see it as `committing`), writes made meanwhile go to an overlay
    /// over it, and a failure leaves them layered over it, so the next commit retries both.
    /// Commits of one file take turns (`OpenInode::commit`), so they reach the store in order.
    pub(super) fn commit(&self, ino: u64, inode: &OpenInode, durable: bool) -> FsResult<()> {
        let _turn = inode.commit.lock();
        let mut st = inode.state.write();
        if st.unlinked {
            return Ok(());
        }
        let pending = st.pending();
        if !pending.dirty {
            if durable {
                let key = st.key.clone();
                drop(st);
                self.backend.sync(&key)?;
                self.index.sync()?;
            }
            return Ok(());
        }
        let Some(staged) = st.staged.take() else {
            st.set_dirty(false);
            return Ok(());
        };
        // The store consumes the staged value (a file-backed store renames its file); this
        // second handle on the same bytes is what the file reads as until the commit is done,
        // and stays with the inode if the commit fails.
        let keep = match staged.try_clone_detached() {
            Ok(k) => Arc::new(k),
            Err(e) => {
                st.staged = Some(staged);
                return Err(e.into());
            }
        };
        let key = st.key.clone();
        let indexed = st.indexed.take();
        st.set_dirty(false);
        st.committing = Some(keep.clone());
        drop(st);
        let result = self.commit_staged(ino, &key, staged, pending.mtime, indexed, durable);
        let mut st = inode.state.write();
        st.committing = None;
        if let Err(e) = result {
            log::warn!("commit of inode {ino} failed, its writes stay staged: {e}");
            // Writes made meanwhile are layered over `keep`, so the staged value holds them
            // all; otherwise `keep` is staged again.
            if st.staged.is_none() {
                st.staged = Some(match Arc::try_unwrap(keep) {
                    Ok(k) => k,
                    Err(k) => k.try_clone_detached()?,
                });
                st.indexed = indexed;
            }
            st.set_dirty(true);
            if st.pending().mtime.is_none() {
                st.set_mtime(pending.mtime);
            }
            return Err(e);
        }
        if !st.pending().dirty {
            st.set_mtime(None);
        } else if let Err(e) = self.rebase_staged(&mut st) {
            // The commit is done; the writes made meanwhile still read (and commit) through
            // the bytes below them, only not in place.
            log::warn!("inode {ino}: writes made during its commit stay layered: {e}");
        }
        drop(st);
        drop(keep);
        if let Some(blocks) = &self.blocks
            && let Ok(n) = self.index.node(Ino(ino).node())
            && let Some(size) = n.value
        {
            blocks.queue(Ino(ino).node(), &key, size, n.mtime);
        }
        if durable {
            self.index.sync()?;
        }
        Ok(())
    }

    /// The store and index half of [`DsFs::commit`], run without the inode's state lock.
    fn commit_staged(
        &self,
        ino: u64,
        key: &Key,
        staged: Staged,
        pending_mtime: Option<Timestamp>,
        indexed: Option<(u64, Timestamp)>,
        durable: bool,
    ) -> FsResult<()> {
        let size = staged.len()?;
        // The times of the last change, not of this commit: a commit on the kernel's
        // asynchronous RELEASE must not move a file's times after close() returned.
        let mtime = match pending_mtime {
            Some(t) => t,
            None => recorded_mtime(&self.index, ino)?,
        };
        self.backend.commit_staged(key, staged, durable)?;
        if pending_mtime.is_some() && indexed == Some((size, mtime)) {
            // The index has recorded exactly this since the create: one index write per
            // empty new file, not two.
            return Ok(());
        }
        self.index.write(|tx| {
            let id = Ino(ino).node();
            let mut n = tx.node_required(id)?;
            n.value = Some(size);
            n.mtime = mtime;
            // A write changes ctime as well; a time set explicitly since (`futimens`, as
            // `cp -a` does before close) must not take ctime back with it.
            n.ctime = n.ctime.max(mtime);
            tx.put_node(id, &n)?;
            tx.set_key(key, id, size)
        })?;
        Ok(())
    }

    /// After a commit that writes raced: the writes made meanwhile are an overlay over the
    /// bytes just committed, read through the staged value the commit consumed. Puts them over
    /// the store's value instead (the same bytes now), so that reads stop going through the
    /// old staged value and the next commit can write just the dirty ranges in place; where
    /// the store stages no overlay, copies the committed bytes in under them.
    fn rebase_staged(&self, st: &mut InodeState) -> FsResult<()> {
        let Some(next) = st.staged.as_mut() else {
            return Ok(());
        };
        if !next.is_layered() {
            return Ok(());
        }
        let fresh = self.backend.stage(&st.key, StageInit::CopyCurrent)?;
        if !fresh.is_overlay() || !next.rebase(&fresh)? {
            next.materialize()?;
        }
        Ok(())
    }

    /// `close` of one descriptor: commits pending writes.
    pub fn flush(&self, fh: u64) -> FsResult<()> {
        if ipfs::is_virtual(fh) {
            return Ok(());
        }
        let h = self.handle(fh)?;
        self.commit(h.ino, &h.inode, false)
    }

    /// `fsync`: commits pending writes durably.
    pub fn fsync(&self, fh: u64) -> FsResult<()> {
        if ipfs::is_virtual(fh) {
            return Ok(());
        }
        let h = self.handle(fh)?;
        self.commit(h.ino, &h.inode, true)
    }

    /// `fsync` of a directory: makes every change so far durable, in the store as well as in
    /// the index. A rename, create or unlink below the directory changed keys in the store
    /// (`rename` moves a value to its new key); with the index alone durable, a power loss
    /// would take the store back and the repair after it the names with it.
    pub fn fsyncdir(&self) -> FsResult<()> {
        self.store.sync(&Key::root())?;
        Ok(())
    }

    /// The last reference to a handle is gone: commits if it was the inode's last handle.
    pub fn release(&self, fh: u64) -> FsResult<()> {
        if ipfs::is_virtual(fh) {
            return self.virtual_release(fh);
        }
        let Some(h) = self.handles.write().remove(&fh) else {
            return Err(FsError::BadHandle);
        };
        if h.writable {
            h.inode.writers.fetch_sub(1, Ordering::Relaxed);
        }
        let result = self.commit(h.ino, &h.inode, false);
        self.forget_open_keeping(h.ino, &h.inode, result.is_err());
        result
    }

    pub(super) fn truncate(&self, ino: u64, size: u64) -> FsResult<()> {
        let attr = self.getattr(ino)?;
        if attr.kind == FileKind::Dir {
            return Err(FsError::IsDir);
        }
        if attr.kind != FileKind::File {
            return Err(FsError::Invalid("truncate of a non-file".into()));
        }
        if let Some(max) = self.backend.capabilities().max_value_size
            && size > max
        {
            return Err(FsError::FileTooBig);
        }
        let key = self.key_of(ino)?;
        let inode = self.open_inode(ino, key)?;
        let result = (|| {
            {
                let mut st = inode.state.write();
                if size == 0 && st.staged.is_none() {
                    st.staged = Some(self.backend.stage(&st.key, StageInit::Empty)?);
                } else {
                    self.ensure_staged(&mut st)?;
                }
                if let Some(s) = &st.staged {
                    s.set_len(size)?;
                }
                st.touch();
            }
            // A truncate is visible to every later reader, so commit it unless a handle is
            // still writing (its close commits).
            if inode.writers.load(Ordering::Relaxed) == 0 {
                self.commit(ino, &inode, false)?;
            }
            Ok(())
        })();
        self.drop_open_ref(ino, &inode);
        result
    }

    /// `fallocate`: mode 0 reserves (and extends to) `offset + len`; other modes are
    /// EOPNOTSUPP.
    pub fn fallocate(&self, fh: u64, offset: u64, len: u64, mode: i32) -> FsResult<()> {
        self.refuse_virtual(fh)?;
        self.check_writable()?;
        if mode != 0 && mode != libc::FALLOC_FL_KEEP_SIZE {
            return Err(FsError::NotSupported(
                "only plain fallocate is supported".into(),
            ));
        }
        let h = self.handle(fh)?;
        if !h.writable {
            return Err(FsError::BadHandle);
        }
        let end = offset
            .checked_add(len)
            .ok_or_else(|| FsError::Invalid("offset + length overflows".into()))?;
        self.check_room_for(len)?;
        let mut st = h.inode.state.write();
        let staged = self.ensure_staged(&mut st)?;
        if mode == 0 && staged.len()? < end {
            staged.set_len(end)?;
            st.touch();
        }
        Ok(())
    }

    /// `lseek` with `SEEK_DATA`/`SEEK_HOLE`: holes are reported for staged (sparse) files;
    /// committed values are all data.
    pub fn lseek(&self, fh: u64, offset: i64, whence: i32) -> FsResult<i64> {
        if ipfs::is_virtual(fh) {
            return self.virtual_lseek(fh, offset, whence);
        }
        let h = self.handle(fh)?;
        let st = h.inode.state.read();
        let size = match st.bytes() {
            Some(s) => s.len()?,
            None => self.index.value_size(&st.key)?.unwrap_or(0),
        } as i64;
        if offset < 0 {
            return Err(FsError::Invalid("negative offset".into()));
        }
        match whence {
            libc::SEEK_DATA | libc::SEEK_HOLE => {
                if offset >= size {
                    return Err(FsError::NoSuchOffset);
                }
                if let Some(s) = st.bytes() {
                    return s
                        .seek_data_hole(offset, whence)
                        .map_err(|_| FsError::NoSuchOffset);
                }
                Ok(if whence == libc::SEEK_DATA {
                    offset
                } else {
                    size
                })
            }
            libc::SEEK_SET => Ok(offset),
            libc::SEEK_END => Ok(size + offset),
            _ => Err(FsError::Invalid(format!("unsupported whence {whence}"))),
        }
    }
}

/// The recorded modification time of `ino` (for a commit with no newer write).
fn recorded_mtime(index: &Index, ino: u64) -> FsResult<Timestamp> {
    Ok(index.node(Ino(ino).node())?.mtime)
}
