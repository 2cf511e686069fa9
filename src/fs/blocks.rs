//! `-o ipfs_blocks=on`: the UnixFS blocks of every committed regular file are also written
//! under `/blocks`, in Kubo's key scheme (default import settings: CIDv0, dag-pb leaves,
//! 262,144-byte chunks, balanced layout), so that a Kubo given the repository's `blocks/` serves
//! the file by the CID `user.ipfs.cid` reports.
//!
//! Where it runs: a commit only queues the file (its node, size and mtime); one worker thread
//! per mount reads the committed value once, streaming it chunk by chunk, writes the blocks
//! through the indexed store in batches (so they are listed under `/blocks` like the blocks of
//! `dsfs add`), and records the CID in the index as `user.ipfs.cid` would. A commit never
//! waits for it and other files' commits are not held up. A job whose file changed again (or
//! went away) before the worker reached it is skipped: the newer commit queued its own job.
//! `user.ipfs.cid` asked before the worker got there computes and writes the blocks itself.
//! Shutdown waits for the queue to drain.
//!
//! The worker reads the file by its key as the index has it when the job runs, under a shared
//! subtree guard on the file (see `subtree.rs`): a rename of the file or of a directory above
//! it waits until the read is done, so the value cannot move away (or another file's value
//! take its old key) between the key lookup and the read.
//!
//! Blocks are named by their hash, so a read racing a rewrite can only produce blocks that no
//! file refers to, never a wrong block; the CID record is kept only when the file's mtime and
//! size are still those the job was queued with. Blocks of overwritten or deleted files stay,
//! as unpinned blocks stay in Kubo until its garbage collection (see `docs/UNIXFS.md`).

use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;

use parking_lot::Mutex;

use crate::datastore::{Batch, Datastore, Key, Result};
use crate::index::node::Timestamp;
use crate::index::{Index, IndexErrorKind, IndexedStore, NodeId};

use super::subtree::Subtrees;

/// One committed file to turn into blocks (read by its key when the job runs: the file may
/// have been renamed since its commit).
struct Job {
    id: NodeId,
    size: u64,
    mtime: Timestamp,
}

/// The queue and its worker.
pub(super) struct BlockWriter {
    tx: Mutex<Option<mpsc::Sender<Job>>>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

/// A [`crate::unixfs::BlockSink`] that writes blocks through a store in batches, skipping the
/// blocks it already holds.
pub(super) struct StoreBlocks<'a> {
    store: &'a dyn Datastore,
    batch: Option<Box<dyn Batch + 'a>>,
    pending: usize,
}

impl<'a> StoreBlocks<'a> {
    /// Blocks per batch commit.
    const SIZE: usize = 256;

    pub(super) fn new(store: &'a dyn Datastore) -> StoreBlocks<'a> {
        StoreBlocks {
            store,
            batch: None,
            pending: 0,
        }
    }

    /// Commits what is still batched.
    pub(super) fn finish(mut self) -> Result<()> {
        match self.batch.take() {
            Some(b) => b.commit(),
            None => Ok(()),
        }
    }
}

impl crate::unixfs::BlockSink for StoreBlocks<'_> {
    fn put_block(&mut self, cid: &cid::Cid, bytes: &[u8]) -> Result<()> {
        let key = crate::cid::block_key(cid.hash());
        if self.store.has(&key)? {
            return Ok(());
        }
        let batch = match &mut self.batch {
            Some(b) => b,
            None => self.batch.insert(self.store.batch()?),
        };
        batch.put(key, bytes.to_vec())?;
        self.pending += 1;
        if self.pending >= Self::SIZE {
            self.pending = 0;
            if let Some(full) = self.batch.take() {
                full.commit()?;
            }
        }
        Ok(())
    }
}

/// Whether `key` is itself under `/blocks` (a block copied in by hand is not imported again).
fn is_block_key(key: &Key) -> bool {
    let k = key.as_str();
    k == crate::cid::BLOCKS_PREFIX
        || k.strip_prefix(crate::cid::BLOCKS_PREFIX)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// Imports the committed value of `key` (of `size` bytes) with the default settings, writing
/// its blocks to `store`; returns the root CID.
pub(super) fn import_with_blocks(
    store: &dyn Datastore,
    backend: &dyn Datastore,
    key: &Key,
    size: u64,
) -> Result<String> {
    let mut sink = StoreBlocks::new(store);
    let link = crate::unixfs::import_value(
        backend,
        key,
        size,
        crate::unixfs::ImportOptions::default(),
        &mut sink,
    )?;
    sink.finish()?;
    Ok(link.cid.to_string())
}

impl BlockWriter {
    /// Starts the worker of a mount over `store`, whose renames take their guards in
    /// `subtrees`.
    pub(super) fn start(
        store: Arc<IndexedStore>,
        subtrees: Arc<Subtrees>,
    ) -> std::io::Result<BlockWriter> {
        let (tx, rx) = mpsc::channel::<Job>();
        let worker = std::thread::Builder::new()
            .name("dsfs-ipfs-blocks".into())
            .spawn(move || {
                for job in rx {
                    run(&store, &subtrees, &job);
                }
            })?;
        Ok(BlockWriter {
            tx: Mutex::new(Some(tx)),
            worker: Mutex::new(Some(worker)),
        })
    }

    /// Queues the file `id`, just committed as `key` with `size` bytes and `mtime`.
    pub(super) fn queue(&self, id: NodeId, key: &Key, size: u64, mtime: Timestamp) {
        if is_block_key(key) {
            return;
        }
        if let Some(tx) = self.tx.lock().as_ref() {
            let job = Job { id, size, mtime };
            if tx.send(job).is_err() {
                log::warn!("ipfs_blocks: the block writer has stopped; {key} gets no blocks");
            }
        }
    }

    /// Lets the worker finish the queue and waits for it.
    pub(super) fn stop(&self) {
        drop(self.tx.lock().take());
        if let Some(worker) = self.worker.lock().take()
            && worker.join().is_err()
        {
            log::error!("ipfs_blocks: the block writer panicked");
        }
    }
}

/// Whether node `id` of `index` still has this committed size and mtime.
fn unchanged(index: &Index, id: NodeId, size: u64, mtime: Timestamp) -> bool {
    matches!(index.node(id), Ok(n) if n.value == Some(size) && n.mtime == mtime)
}

fn run(store: &Arc<IndexedStore>, subtrees: &Subtrees, job: &Job) {
    let index = store.index();
    // No rename moves the file's value while it is read by key.
    let _below = match subtrees.shared(index, &[job.id]) {
        Ok(guard) => guard,
        Err(e) => {
            log::warn!("ipfs_blocks: node {:?} gets no blocks: {e}", job.id);
            return;
        }
    };
    if !unchanged(index, job.id, job.size, job.mtime) {
        return;
    }
    let key = match index.key_of(job.id) {
        Ok(key) => key,
        Err(e) if e.kind() == IndexErrorKind::NotFound => return,
        Err(e) => {
            log::warn!("ipfs_blocks: node {:?} gets no blocks: {e}", job.id);
            return;
        }
    };
    // Moved under /blocks since its commit: a block copied in is not imported.
    if is_block_key(&key) {
        return;
    }
    let backend = store.backend();
    match import_with_blocks(store.as_ref(), backend.as_ref(), &key, job.size) {
        Ok(cid) => {
            if unchanged(index, job.id, job.size, job.mtime) {
                super::xattr::record_cid(index, job.id, job.mtime, job.size, &cid);
            }
        }
        Err(e) if e.is_not_found() => {
            log::debug!("ipfs_blocks: {key} went away before its blocks were written");
        }
        Err(e) => log::warn!("ipfs_blocks: writing the blocks of {key} failed: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::types::{Ctx, FsOptions};
    use super::super::{CID_XATTR, DsFs};
    use crate::backend::MemStore;
    use crate::datastore::Datastore;
    use crate::index::{Index, IndexOptions, IndexedStore, ROOT};

    const CTX: Ctx = Ctx {
        uid: 1000,
        gid: 1000,
    };

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| ((i * 31 + i / 7) % 251) as u8).collect()
    }

    fn write(fs: &DsFs, name: &str, data: &[u8]) -> u64 {
        let (attr, opened) = fs
            .create(CTX, ROOT, name.as_bytes(), 0o644, 0o022, libc::O_WRONLY)
            .unwrap();
        fs.write(opened.fh, 0, data).unwrap();
        fs.release(opened.fh).unwrap();
        attr.ino
    }

    fn cat(store: &dyn Datastore, cid: &str) -> Vec<u8> {
        let cid = cid::Cid::try_from(cid).unwrap();
        let mut out = Vec::new();
        crate::unixfs::cat(store, &cid, &mut out).unwrap();
        out
    }

    /// With `ipfs_blocks` the committed files' blocks are in `/blocks` once the writer has
    /// drained (at shutdown at the latest), listed in the index, and they rebuild each file by
    /// the CID `user.ipfs.cid` reports; without it no block is written.
    #[test]
    fn committed_files_get_their_blocks_and_only_with_the_option() {
        for on in [true, false] {
            let index = Arc::new(Index::in_memory(IndexOptions::default()).unwrap());
            let mem = Arc::new(MemStore::new());
            let store = Arc::new(IndexedStore::new(mem.clone(), index));
            let fs = DsFs::new(
                store.clone(),
                FsOptions {
                    ipfs_blocks: on,
                    ..FsOptions::default()
                },
            );
            let big = pattern(3 * 262_144 + 7);
            let a = write(&fs, "a", &big);
            let b = write(&fs, "b", b"hello\n");
            // Rewritten before or after its first job ran: the last content gets blocks.
            write(&fs, "b", b"hello again\n");
            let cid_a = String::from_utf8(fs.getxattr(a, CID_XATTR.as_bytes()).unwrap()).unwrap();
            let cid_b = String::from_utf8(fs.getxattr(b, CID_XATTR.as_bytes()).unwrap()).unwrap();
            fs.shutdown().unwrap();
            let count = |store: &dyn Datastore| {
                store
                    .query(crate::datastore::Query {
                        prefix: crate::cid::BLOCKS_PREFIX.into(),
                        keys_only: true,
                        ..Default::default()
                    })
                    .unwrap()
                    .count()
            };
            let blocks = count(mem.as_ref());
            if !on {
                assert_eq!(blocks, 0, "no blocks without the option");
                continue;
            }
            assert_eq!(cat(mem.as_ref(), &cid_a), big);
            assert_eq!(cat(mem.as_ref(), &cid_b), b"hello again\n");
            // 4 leaves and a root for a, one leaf for b's last content (maybe one for its
            // first, if the writer got to it in time).
            assert!((6..=7).contains(&blocks), "{blocks} blocks");
            // The index lists them, as it lists the blocks of `dsfs add`.
            assert_eq!(count(store.as_ref()), blocks);
        }
    }
}
