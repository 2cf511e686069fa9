//! The stores under test. Adding a store is one entry in [`all`].

use std::path::Path;
use std::sync::Arc;

use dsfs::backend::flatfs::{FlatFsOptions, ShardFn};
use dsfs::backend::spdk::spec::SpdkSpec;
use dsfs::backend::tiered::TieredOptions;
use dsfs::backend::{FlatFsStore, MemStore, MountStore, RedbStore, TieredStore};
use dsfs::index::{Index, IndexOptions, IndexedStore};
use dsfs::spec::{self, OpenMode, StoreSpec};
use dsfs::{Datastore, Key};

/// upstream's flatfs suite topology: flatfs `prefix/2` mounted at `/capital` under `root`, so
/// flatfs receives exactly the keys of its alphabet (`/0KEY0` ...).
fn with_flatfs_at_capital(
    root: Arc<dyn Datastore>,
    dir: &Path,
) -> dsfs::Result<Arc<dyn Datastore>> {
    let flat = FlatFsStore::create_or_open(
        dir.join("flatfs"),
        ShardFn::Prefix(2),
        FlatFsOptions::default(),
    )?;
    Ok(Arc::new(MountStore::new(vec![
        (Key::root(), root),
        (Key::new("/capital"), Arc::new(flat)),
    ])?))
}

/// Opens (or re-opens) a store whose files live in the given directory.
pub type OpenFn = Arc<dyn Fn(&Path) -> dsfs::Result<Arc<dyn Datastore>> + Send + Sync>;

/// How to make one kind of store. Every trial gets a fresh temporary directory and calls `open`
/// with it; cases that test persistence call `open` again on the same directory after closing
/// and dropping the previous handle.
#[derive(Clone)]
pub struct StoreFactory {
    /// The store's name: the first part of every trial name (`<name>::<case>`).
    pub name: &'static str,
    /// Opens (or re-opens) the store whose files live in `dir` (a fresh temp dir per trial).
    pub open: OpenFn,
}

impl StoreFactory {
    /// A factory named `name` that opens stores with `open`.
    pub fn new(
        name: &'static str,
        open: impl Fn(&Path) -> dsfs::Result<Arc<dyn Datastore>> + Send + Sync + 'static,
    ) -> StoreFactory {
        StoreFactory {
            name,
            open: Arc::new(open),
        }
    }
}

/// Every store the suite runs against, in the order their trials are listed.
pub fn all() -> Vec<StoreFactory> {
    #[allow(unused_mut)]
    let mut stores = vec![
        StoreFactory::new("mem", |_dir| Ok(Arc::new(MemStore::new()))),
        StoreFactory::new("redb", |dir| {
            Ok(Arc::new(RedbStore::open(
                dir.join("values.redb"),
                Default::default(),
            )?))
        }),
        StoreFactory::new("indexed-mem", |_dir| {
            let index = Arc::new(Index::in_memory(IndexOptions::default())?);
            Ok(Arc::new(IndexedStore::new(
                Arc::new(MemStore::new()),
                index,
            )))
        }),
        StoreFactory::new("indexed-redb", |dir| {
            let backend = RedbStore::open(dir.join("values.redb"), Default::default())?;
            let index = Arc::new(Index::open(
                dir.join("index.redb"),
                IndexOptions::default(),
            )?);
            Ok(Arc::new(IndexedStore::new(Arc::new(backend), index)))
        }),
        StoreFactory::new("tiered", |dir| {
            // A small threshold so that the suite's 64-byte values and 256 KiB batch values
            // exercise both tiers.
            let options = TieredOptions {
                threshold: 100,
                ..TieredOptions::default()
            };
            Ok(Arc::new(TieredStore::open(
                &dir.join("records.redb"),
                &dir.join("files"),
                options,
            )?))
        }),
        StoreFactory::new("flatfs-encoded", |dir| {
            let options = FlatFsOptions {
                encode_keys: true,
                ..FlatFsOptions::default()
            };
            Ok(Arc::new(FlatFsStore::create_or_open(
                dir.join("flatfs"),
                ShardFn::NextToLast(2),
                options,
            )?))
        }),
        StoreFactory::new("mount-mem-flatfs", |dir| {
            with_flatfs_at_capital(Arc::new(MemStore::new()), dir)
        }),
        StoreFactory::new("mount-redb-flatfs", |dir| {
            let root = RedbStore::open(dir.join("values.redb"), Default::default())?;
            with_flatfs_at_capital(Arc::new(root), dir)
        }),
        // The SPDK store on the in-process blobstore: 16 KiB clusters and 512-byte io units, so
        // the suite's values span several clusters and end inside io units.
        StoreFactory::new("spdk-fake", |dir| {
            let mut spec = SpdkSpec::parse(&format!("fake={}", dir.join("bs.img").display()))?;
            spec.set("cluster", "16384")?;
            spec.set("io_unit", "512")?;
            spec.set("size", "268435456")?;
            Ok(Arc::new(spec.open()?.0) as Arc<dyn Datastore>)
        }),
        StoreFactory::new("default-repo", |dir| {
            let spec = StoreSpec::parse(&dir.join("repo").to_string_lossy())?;
            let mode = OpenMode {
                create: true,
                ..OpenMode::default()
            };
            let opened = spec::open(&spec, mode)?;
            Ok(opened.store as Arc<dyn Datastore>)
        }),
    ];
    stores.extend(motr());
    #[cfg(feature = "rados")]
    stores.extend(rados());
    #[cfg(feature = "spdk")]
    stores.extend(spdk_aio());
    stores
}

/// The SPDK store on a real SPDK (an AIO bdev over a 64 MiB image in each trial's directory),
/// when `DSFS_TEST_SPDK` is set and dsfs was built against an installed SPDK.
#[cfg(feature = "spdk")]
fn spdk_aio() -> Option<StoreFactory> {
    std::env::var_os("DSFS_TEST_SPDK")?;
    Some(StoreFactory::new("spdk-aio", |dir| {
        let image = dir.join("bs.img");
        if !image.exists() {
            let f = std::fs::File::create(&image).map_err(|e| dsfs::Error::io("image", e))?;
            f.set_len(64 << 20)
                .map_err(|e| dsfs::Error::io("image", e))?;
        }
        let mut spec = SpdkSpec::parse(&format!("aio={}", image.display()))?;
        spec.set("cluster", "16384")?;
        Ok(Arc::new(spec.open()?.0) as Arc<dyn Datastore>)
    }))
}

/// The Motr store over the in-process Motr (persisted in the trial's directory), in the
/// native layout (small values inline, larger ones in objects) and in go-ds-motr's. With
/// `DSFS_TEST_MOTR` set to a spec's options (`ha=...&local=...&profile=...&process=...`) and
/// the `motr` feature, also over that real cluster (`motr-real`), one index per trial.
fn motr() -> Vec<StoreFactory> {
    use dsfs::backend::motr::fake::FakeMotr;
    use dsfs::backend::motr::{Id128, Layout, MotrOptions, MotrStore};
    let open = |dir: &Path, layout: Layout| -> dsfs::Result<Arc<dyn Datastore>> {
        let fake = FakeMotr::open(&dir.join("motr.fake"))
            .map_err(|e| dsfs::Error::io("opening the in-process Motr", e))?;
        let options = MotrOptions {
            layout,
            inline_max: 100,
            ..MotrOptions::new(Id128 {
                hi: 0x7800_0000_0000_0001,
                lo: 1,
            })
        };
        Ok(Arc::new(MotrStore::open(Arc::new(fake), options)?))
    };
    #[allow(unused_mut)]
    let mut stores = vec![
        StoreFactory::new("motr-fake", move |dir| open(dir, Layout::Native)),
        StoreFactory::new("motr-fake-go-ds-motr", move |dir| {
            open(dir, Layout::GoDsMotr)
        }),
    ];
    #[cfg(feature = "motr")]
    if let Ok(options) = std::env::var("DSFS_TEST_MOTR") {
        stores.push(real_motr(options));
    }
    stores
}

/// The RADOS store on the cluster that `DSFS_TEST_CEPH_CONF` names (`tests/ceph/cluster.sh`),
/// each trial in a RADOS namespace of its own (named after its directory, so a reopen finds
/// it). Without a cluster: none, with a message (and a failure when `CI` is set).
#[cfg(feature = "rados")]
fn rados() -> Option<StoreFactory> {
    use dsfs::backend::rados::{RadosOptions, RadosStore};
    let Some(conf) = std::env::var_os("DSFS_TEST_CEPH_CONF") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but DSFS_TEST_CEPH_CONF is not: the Ceph cluster did not start"
        );
        eprintln!("no Ceph cluster (DSFS_TEST_CEPH_CONF unset): the rados store is skipped");
        return None;
    };
    let pool = std::env::var("DSFS_TEST_CEPH_POOL").unwrap_or_else(|_| "dsfs".into());
    let id = std::env::var("DSFS_TEST_CEPH_ID").unwrap_or_else(|_| "dsfs".into());
    let run = std::process::id();
    Some(StoreFactory::new("rados", move |dir| {
        let trial = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let options = RadosOptions {
            conf: conf.clone().into(),
            id: id.clone(),
            namespace: format!("conformance-{run}-{trial}"),
            // Small values inline and large ones in 64 KiB chunks, so the suite's values
            // exercise both kinds of record and multi-chunk values.
            inline_max: 100,
            chunk_size: 64 << 10,
            // Few shards: every query reads every shard, and the suite runs many queries.
            shards: 3,
            ..RadosOptions::new(pool.clone())
        };
        Ok(Arc::new(RadosStore::open(options)?) as Arc<dyn Datastore>)
    }))
}

/// The Motr store on the cluster `DSFS_TEST_MOTR` describes: one client for the whole run (Motr
/// allows one per process), one fresh index per trial directory.
#[cfg(feature = "motr")]
fn real_motr(options: String) -> StoreFactory {
    use dsfs::backend::motr::config::MotrSpec;
    use dsfs::backend::motr::ops::{OpResult, Record};
    use dsfs::backend::motr::sys::{ClientConf, RealMotr};
    use dsfs::backend::motr::{Id128, MotrOps, MotrOptions, MotrStore};
    use std::sync::{Mutex, OnceLock};

    /// The shared client, without `shutdown`: closing one trial's store keeps it.
    struct Shared(Arc<RealMotr>);
    impl MotrOps for Shared {
        fn idx_create(&self, idx: Id128) -> OpResult<()> {
            self.0.idx_create(idx)
        }
        fn idx_put(&self, idx: Id128, r: &[(&[u8], &[u8])], f: u32) -> OpResult<Vec<i32>> {
            self.0.idx_put(idx, r, f)
        }
        fn idx_get(&self, idx: Id128, k: &[&[u8]]) -> OpResult<Vec<Result<Vec<u8>, i32>>> {
            self.0.idx_get(idx, k)
        }
        fn idx_del(&self, idx: Id128, k: &[&[u8]], f: u32) -> OpResult<Vec<i32>> {
            self.0.idx_del(idx, k, f)
        }
        fn idx_next(&self, idx: Id128, s: &[u8], n: usize, f: u32) -> OpResult<Vec<Record>> {
            self.0.idx_next(idx, s, n, f)
        }
        fn obj_create(&self, id: Id128) -> OpResult<()> {
            self.0.obj_create(id)
        }
        fn obj_delete(&self, id: Id128) -> OpResult<()> {
            self.0.obj_delete(id)
        }
        fn obj_write(&self, id: Id128, off: u64, d: &[u8]) -> OpResult<()> {
            self.0.obj_write(id, off, d)
        }
        fn obj_read(&self, id: Id128, off: u64, b: &mut [u8]) -> OpResult<()> {
            self.0.obj_read(id, off, b)
        }
        fn block_size(&self) -> usize {
            self.0.block_size()
        }
    }

    static CLIENT: OnceLock<Arc<RealMotr>> = OnceLock::new();
    let trials: Arc<Mutex<Vec<std::path::PathBuf>>> = Arc::default();
    let run = u64::from(std::process::id());
    StoreFactory::new("motr-real", move |dir| {
        let spec = MotrSpec::parse_arg("0x7800000000000001:1").and_then(|mut m| {
            for opt in options.split('&').filter(|o| !o.is_empty()) {
                let (k, v) = opt.split_once('=').unwrap_or((opt, ""));
                m.set(k, v)?;
            }
            Ok(m)
        })?;
        let client = match CLIENT.get() {
            Some(c) => c.clone(),
            None => {
                let need = |v: &Option<String>| v.clone().unwrap_or_default();
                let c = RealMotr::connect(ClientConf {
                    ha: need(&spec.ha),
                    local: need(&spec.local),
                    profile: need(&spec.profile),
                    process: need(&spec.process),
                    timeout: std::time::Duration::from_secs(spec.timeout_secs),
                })?;
                CLIENT.get_or_init(|| c).clone()
            }
        };
        // One index per trial directory: a reopen finds the same one.
        let n = {
            let mut t = trials.lock().unwrap_or_else(|e| e.into_inner());
            match t.iter().position(|d| d == dir) {
                Some(i) => i,
                None => {
                    t.push(dir.to_owned());
                    t.len() - 1
                }
            }
        };
        let options = MotrOptions {
            inline_max: 100,
            layout: spec.layout,
            ..MotrOptions::new(Id128 {
                hi: 0x7800_0000_0000_0000 | (run & 0x00ff_ffff_ffff_ffff).max(1),
                lo: n as u64 + 1,
            })
        };
        Ok(Arc::new(MotrStore::open(Arc::new(Shared(client)), options)?) as Arc<dyn Datastore>)
    })
}
