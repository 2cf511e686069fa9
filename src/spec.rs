//! Store specs: how the command line names a datastore, and the repository file that records a
//! directory's layout.
//!
//! Syntax: `TYPE:ARGUMENT[?OPTION=VALUE&...]`, or a bare path.
//!
//! | spec | store |
//! |---|---|
//! | `mem:` | a volatile in-memory store with an in-memory index |
//! | `redb:PATH` | values in the redb file `PATH`; the index beside it in `PATH.index` |
//! | `flatfs:PATH` | a go-ds-flatfs directory (a Kubo repo's `blocks/`), created if missing only with [`OpenMode::create`] (as every store is, with its missing parent directories); the index in `PATH/.dsfs.index.redb`, which flatfs readers skip |
//! | `kubo:IPFS_PATH` | the datastore a Kubo repository's `datastore_spec` describes (flatfs, mount and measure are supported; a `levelds` part is named in a clear error) |
//! | `json:FILE` | the Kubo-style JSON datastore tree in `FILE` (paths relative to it); the index in `FILE.index.redb` |
//! | `mount:/blocks=flatfs:D/blocks;/=redb:D/v.redb;index=D/i.redb` | a mount of `mem:`, `redb:` and `flatfs:` children (each with its own `?options`) |
//! | `dir:PATH` or a bare `PATH` | a dsfs repository: the embedded default (see below) |
//! | `rados:POOL?conf=PATH&id=NAME&prefix=NS&timeout=SECS` | a Ceph RADOS pool (cargo feature `rados`); the index in memory unless `index=PATH`, following the cluster (changed index shards re-read) at open and while mounted |
//! | `spdk:aio=IMAGE?io_unit=4096&cluster=65536&mem=256` | an SPDK blobstore in BlobFS's layout on an AIO bdev (cargo feature `spdk`); `spdk:fake=IMAGE` is the in-process blobstore; the index in `IMAGE.index.redb` |
//!
//! Options: `index=PATH` puts the index elsewhere; `durable=true` makes redb fsync every write;
//! for flatfs, `shard=/repo/flatfs/shard/v1/next-to-last/2` (or just `next-to-last/2`) picks
//! the shard function of a new directory, `sync=true` fsyncs every put and `encode=true` stores
//! keys outside flatfs's alphabet under reversible encoded names.
//!
//! A **repository** is a directory with a `dsfs.json` file naming its datastore (in the JSON
//! form of Kubo's `Datastore.Spec`, with paths relative to the directory) and its index file.
//! [`OpenMode::create`] makes a missing or empty directory one with the default layout
//! ([`Repo::default_config`]); opening a non-empty directory that has no `dsfs.json` is
//! refused, so dsfs never writes into a directory it does not own.
//!
//! **Creation is explicit.** Without [`OpenMode::create`], [`open`] first looks at every local
//! path the spec's stores live in (a repository directory and the paths its `dsfs.json`
//! names, `flatfs:` and `redb:` paths, the paths a `json:` file or a Kubo `datastore_spec`
//! names) and refuses, before anything is written, if one is missing or is an empty directory
//! or an empty file ([`absent_paths`]): a mistyped path is an error, not a new empty store.
//!
//! **Index files.** An index in its default place (beside or inside the store) that is missing
//! is built from the store: so a Kubo `blocks/` directory mounts as `flatfs:` with no index
//! yet. An index named by `index=PATH` must exist unless the open creates (the store is new, or
//! [`OpenMode::create`]) or rebuilds it ([`OpenMode::rebuild_index`], `dsfs reindex`)
//! ([`absent_index`]): a new index has the store's keys but none of what only an index
//! records (explicit empty directories, modes, owners, times, xattrs, symlinks, special files,
//! hard links), so a mistyped `index=` would look like lost metadata. When an existing store
//! gets a new index anyway (with `create`, or a repository whose own index file is gone), a
//! warning says so. The local index of a shared cluster store (`rados:`, `motr:`) is this
//! host's cache of the cluster and is built when missing.
//!
//! **A repository missing a part.** A repository whose `dsfs.json` names a store directory
//! or file that is missing or empty (a `blocks/` deleted, or on a disk that is not mounted) is
//! refused by every open, [`OpenMode::create`] included, with a message naming the part and the
//! keys it holds ([`missing_parts`]); only [`OpenMode::drop_missing`] (`dsfs fsck --repair
//! --drop-missing`) makes an empty store there. The one exception is a repository whose
//! creation was interrupted (a `dsfs.json`, no index file, and none of its parts): `create`
//! finishes it.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use serde_json::{Value, json};

use crate::backend::flatfs::{FlatFsOptions, ShardFn};
use crate::backend::redb::RedbOptions;
use crate::backend::tiered::TieredOptions;
use crate::backend::{FlatFsStore, MemStore, MountStore, RedbStore, TieredStore};
use crate::datastore::{Datastore, Error, ErrorKind, Key, Result};
use crate::index::follow::Prepared;
use crate::index::reconcile::Report;
use crate::index::salvage::{Salvaged, SetAside, open_or_set_aside, rebuild};
use crate::index::store::open_following;
use crate::index::{Index, IndexOptions, IndexedStore};

/// The repository description file inside a repository directory.
pub const REPO_FILE: &str = "dsfs.json";
/// The repository format this version writes and reads.
pub const REPO_VERSION: u64 = 1;

/// A parsed store spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreSpec {
    /// Which store.
    pub kind: SpecKind,
    /// Where the index lives, if not in its default place.
    pub index: Option<PathBuf>,
    /// fsync every write (redb stores).
    pub durable: bool,
    /// The shard function of a new flatfs directory.
    pub shard: Option<String>,
    /// flatfs `sync`: fsync every put.
    pub sync: bool,
    /// Verify every page of redb files when opening them (`fsck`, `reindex`): a damaged file
    /// is then found at once and salvaged. Not part of the spec's text.
    pub check_integrity: bool,
    /// flatfs `encode`: store keys outside flatfs's alphabet under reversible encoded names.
    pub encode: bool,
}

/// The store a spec names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SpecKind {
    /// `mem:`.
    Mem,
    /// `redb:PATH`.
    Redb(PathBuf),
    /// `flatfs:PATH`.
    Flatfs(PathBuf),
    /// `kubo:IPFS_PATH`.
    Kubo(PathBuf),
    /// `json:FILE`: a Kubo-style JSON datastore tree, paths relative to the file.
    Json(PathBuf),
    /// `mount:PREFIX=SPEC;PREFIX=SPEC[;index=PATH]`: children of kind mem, redb or flatfs.
    Mount(Vec<(Key, StoreSpec)>),
    /// A repository directory.
    Repo(PathBuf),
    /// `rados:POOL?conf=PATH&id=NAME&prefix=NAMESPACE&timeout=SECS`.
    Rados(RadosSpec),
    /// `spdk:aio=IMAGE?...` or `spdk:fake=IMAGE?...`.
    Spdk(crate::backend::spdk::spec::SpdkSpec),
    /// `motr:INDEX_FID?ha=EP&local=EP&profile=FID&process=FID[&compat=go-ds-motr]` (or
    /// `?fake=PATH` for the in-process Motr).
    Motr(crate::backend::motr::config::MotrSpec),
}

/// Where a `rados:` spec's store lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RadosSpec {
    /// The pool.
    pub pool: String,
    /// The `ceph.conf` (monitors and the keyring's location).
    pub conf: PathBuf,
    /// The cephx client name, as in `client.NAME`.
    pub id: String,
    /// The RADOS namespace that holds this store's objects, so several stores share a pool.
    pub prefix: String,
    /// The bound, in seconds, on connecting and on every cluster operation.
    pub timeout_secs: u64,
}

/// One store scheme: its name, its usage, and how its argument becomes a [`SpecKind`]. Adding
/// a scheme is one row here plus its [`SpecKind`] variant and the arm of [`open`] that opens
/// it; the unknown-scheme message and the option check come from this table.
struct Scheme {
    name: &'static str,
    usage: &'static str,
    parse: fn(&str) -> Result<SpecKind>,
    /// Options beyond the common `index` and `durable`.
    options: &'static [&'static str],
}

/// Every scheme `TYPE:ARGUMENT` that [`StoreSpec::parse`] knows (`mount:` has its own syntax).
const SCHEMES: &[Scheme] = &[
    Scheme {
        name: "mem",
        usage: "mem:",
        parse: |arg| {
            if arg.is_empty() {
                Ok(SpecKind::Mem)
            } else {
                Err(invalid("mem: takes no argument"))
            }
        },
        options: &[],
    },
    Scheme {
        name: "redb",
        usage: "redb:PATH",
        parse: |arg| Ok(SpecKind::Redb(non_empty_path("redb", arg)?)),
        options: &[],
    },
    Scheme {
        name: "flatfs",
        usage: "flatfs:PATH",
        parse: |arg| Ok(SpecKind::Flatfs(non_empty_path("flatfs", arg)?)),
        options: &["shard", "sync", "encode"],
    },
    Scheme {
        name: "kubo",
        usage: "kubo:IPFS_PATH",
        parse: |arg| Ok(SpecKind::Kubo(non_empty_path("kubo", arg)?)),
        options: &[],
    },
    Scheme {
        name: "json",
        usage: "json:FILE",
        parse: |arg| Ok(SpecKind::Json(non_empty_path("json", arg)?)),
        options: &[],
    },
    Scheme {
        name: "dir",
        usage: "dir:PATH",
        parse: |arg| Ok(SpecKind::Repo(non_empty_path("dir", arg)?)),
        options: &[],
    },
    Scheme {
        name: "rados",
        usage: "rados:POOL?conf=PATH&id=NAME&prefix=NS",
        parse: |arg| {
            if arg.is_empty() || arg.contains('/') {
                return Err(invalid("rados: needs a pool name (rados:POOL?conf=...)"));
            }
            Ok(SpecKind::Rados(RadosSpec {
                pool: arg.to_owned(),
                conf: PathBuf::from("/etc/ceph/ceph.conf"),
                id: "admin".to_owned(),
                prefix: "dsfs".to_owned(),
                timeout_secs: 30,
            }))
        },
        options: &["conf", "id", "prefix", "timeout"],
    },
    Scheme {
        name: "spdk",
        usage: "spdk:aio=IMAGE?io_unit=4096&cluster=65536&mem=256",
        parse: |arg| {
            Ok(SpecKind::Spdk(crate::backend::spdk::spec::SpdkSpec::parse(
                arg,
            )?))
        },
        options: crate::backend::spdk::spec::OPTIONS,
    },
    Scheme {
        name: "motr",
        usage: "motr:INDEX_FID?ha=EP&local=EP&profile=FID&process=FID",
        parse: |arg| {
            Ok(SpecKind::Motr(
                crate::backend::motr::config::MotrSpec::parse_arg(arg)?,
            ))
        },
        options: crate::backend::motr::config::OPTIONS,
    },
];

/// The largest spec or repository file read (a datastore spec is a few hundred bytes).
const MAX_SPEC_FILE: u64 = 16 << 20;

/// Reads a JSON spec file: a FIFO, a device or a directory is an error, not a hang, and so is
/// a file over [`MAX_SPEC_FILE`] (not read into memory). `hint` ends the error's message.
fn read_spec_file(path: &Path, hint: &str) -> Result<Vec<u8>> {
    crate::sys::read_config_file(path, MAX_SPEC_FILE).map_err(|e| {
        let message = format!("reading {}{hint}: {e}", path.display());
        if matches!(
            e.kind(),
            std::io::ErrorKind::FileTooLarge | std::io::ErrorKind::InvalidData
        ) {
            Error::with_source(ErrorKind::Corrupt, message, e)
        } else {
            Error::io(message, e)
        }
    })
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidArgument, msg)
}

impl StoreSpec {
    /// Parses a spec string; see the module documentation for the syntax.
    pub fn parse(text: &str) -> Result<StoreSpec> {
        if text.is_empty() {
            return Err(invalid("empty store spec"));
        }
        if let Some(list) = text.strip_prefix("mount:") {
            return StoreSpec::parse_mount(list);
        }
        let (body, options) = match text.rsplit_once('?') {
            Some((b, o)) if has_scheme(b) => (b, Some(o)),
            _ => (text, None),
        };
        let (kind, scheme_options): (SpecKind, &[&str]) = match body.split_once(':') {
            Some((scheme, arg)) if has_scheme(body) => {
                match SCHEMES.iter().find(|s| s.name == scheme) {
                    Some(s) => ((s.parse)(arg)?, s.options),
                    None => {
                        let known: Vec<&str> = SCHEMES.iter().map(|s| s.usage).collect();
                        return Err(invalid(format!(
                            "unknown store type {scheme:?} in {text:?} (known: {}, mount:... or a directory path)",
                            known.join(", ")
                        )));
                    }
                }
            }
            _ => {
                if is_ambiguous_word(body) && !Path::new(body).exists() {
                    return Err(bare_word_error(body));
                }
                (SpecKind::Repo(PathBuf::from(body)), &[])
            }
        };
        let mut spec = StoreSpec {
            kind,
            index: None,
            durable: false,
            shard: None,
            sync: false,
            check_integrity: false,
            encode: false,
        };
        for opt in options.into_iter().flat_map(|o| o.split('&')) {
            if opt.is_empty() {
                continue;
            }
            let (name, value) = opt.split_once('=').unwrap_or((opt, "true"));
            if !matches!(name, "index" | "durable") && !scheme_options.contains(&name) {
                let mut known = vec!["index", "durable"];
                known.extend_from_slice(scheme_options);
                return Err(invalid(format!(
                    "unknown store option {name:?} for this store (known: {})",
                    known.join(", ")
                )));
            }
            match (name, &mut spec.kind) {
                ("index", _) => spec.index = Some(non_empty_path("index", value)?),
                ("durable", _) => spec.durable = parse_bool(name, value)?,
                ("sync", _) => spec.sync = parse_bool(name, value)?,
                ("encode", _) => spec.encode = parse_bool(name, value)?,
                ("shard", _) => {
                    parse_shard(value)?;
                    spec.shard = Some(value.to_owned());
                }
                ("conf", SpecKind::Rados(r)) => r.conf = non_empty_path("conf", value)?,
                ("id", SpecKind::Rados(r)) if !value.is_empty() => r.id = value.to_owned(),
                ("prefix", SpecKind::Rados(r)) if !value.is_empty() => r.prefix = value.to_owned(),
                ("timeout", SpecKind::Rados(r)) => {
                    r.timeout_secs =
                        value
                            .parse::<u64>()
                            .ok()
                            .filter(|&s| s > 0)
                            .ok_or_else(|| {
                                invalid(format!("timeout takes whole seconds, not {value:?}"))
                            })?
                }
                (name, SpecKind::Spdk(s)) => {
                    if !s.set(name, value)? {
                        return Err(invalid(format!("option {name} is not an spdk: option")));
                    }
                }
                (name, SpecKind::Motr(m)) => m.set(name, value)?,
                (other, _) => {
                    return Err(invalid(format!("option {other} needs a value")));
                }
            }
        }
        Ok(spec)
    }
}

impl StoreSpec {
    /// `PREFIX=SPEC;PREFIX=SPEC[;index=PATH]`, each child a `mem:`, `redb:` or `flatfs:` spec
    /// (with its own `?options`).
    fn parse_mount(list: &str) -> Result<StoreSpec> {
        let mut mounts = Vec::new();
        let mut index = None;
        for part in list.split(';').filter(|p| !p.is_empty()) {
            let (lhs, rhs) = part.split_once('=').ok_or_else(|| {
                invalid(format!(
                    "mount: entry {part:?} is not PREFIX=SPEC or index=PATH"
                ))
            })?;
            if lhs == "index" {
                index = Some(non_empty_path("index", rhs)?);
                continue;
            }
            if !lhs.starts_with('/') {
                return Err(invalid(format!(
                    "mount: prefix {lhs:?} must start with '/'"
                )));
            }
            let child = StoreSpec::parse(rhs)?;
            if !matches!(
                child.kind,
                SpecKind::Mem | SpecKind::Redb(_) | SpecKind::Flatfs(_)
            ) {
                return Err(invalid(format!(
                    "mount: child {rhs:?} must be mem:, redb:PATH or flatfs:PATH"
                )));
            }
            mounts.push((Key::new(lhs), child));
        }
        if mounts.is_empty() {
            return Err(invalid("mount: needs at least one PREFIX=SPEC"));
        }
        let all_mem = mounts.iter().all(|(_, c)| c.kind == SpecKind::Mem);
        if index.is_none() && !all_mem {
            return Err(invalid(
                "mount: needs ;index=PATH for its key index (e.g. mount:/blocks=flatfs:/d/blocks;/=redb:/d/v.redb;index=/d/index.redb)",
            ));
        }
        Ok(StoreSpec {
            kind: SpecKind::Mount(mounts),
            index,
            durable: false,
            shard: None,
            sync: false,
            check_integrity: false,
            encode: false,
        })
    }

    /// Opens the store of a `mem:`, `redb:` or `flatfs:` spec (no index).
    fn open_simple(&self) -> Result<Arc<dyn Datastore>> {
        match &self.kind {
            SpecKind::Mem => Ok(Arc::new(MemStore::new())),
            SpecKind::Redb(path) => {
                let options = redb_options(self.durable, self.check_integrity);
                Ok(Arc::new(RedbStore::open_salvaging(path, options)?.0))
            }
            SpecKind::Flatfs(path) => {
                let shard = match &self.shard {
                    Some(t) => parse_shard(t)?,
                    None => ShardFn::IPFS_DEFAULT,
                };
                open_flatfs(path, shard, self.sync, self.encode)
            }
            _ => Err(invalid("not a simple store spec")),
        }
    }
}

impl StoreSpec {
    /// The path that identifies this store on this machine: its directory or file (for a
    /// mount spec, its index), canonical where it exists. A daemon serving the store and a
    /// command that wants it find each other by it. `None` for `mem:`, which nothing shares.
    pub fn home(&self) -> Option<PathBuf> {
        let path = match &self.kind {
            SpecKind::Mem => return None,
            // A shared cluster store is this host's through its local index, if it has one.
            SpecKind::Mount(_) | SpecKind::Rados(_) | SpecKind::Motr(_) => self.index.clone()?,
            SpecKind::Redb(p)
            | SpecKind::Flatfs(p)
            | SpecKind::Kubo(p)
            | SpecKind::Json(p)
            | SpecKind::Repo(p) => p.clone(),
            SpecKind::Spdk(s) => s.image.clone(),
        };
        Some(std::fs::canonicalize(&path).unwrap_or(path))
    }
}

/// Whether `s` starts with a lower-case `scheme:`.
fn has_scheme(s: &str) -> bool {
    match s.split_once(':') {
        Some((scheme, _)) => !scheme.is_empty() && scheme.bytes().all(|b| b.is_ascii_lowercase()),
        None => false,
    }
}

/// Whether a spec that names no existing path is too ambiguous to take as one: a single path
/// component that is a store type (`flatfs`, `mem`, `mount`, perhaps with `?options`) or holds
/// a colon, so that a forgotten or mistyped colon (`--store flatfs`) never creates a
/// repository called `./flatfs`. Any other bare word (`myrepo`) is a path, as `mount` and `cp`
/// take their path arguments.
fn is_ambiguous_word(spec: &str) -> bool {
    let is_bare_word = !spec.contains('/') && spec != "." && spec != "..";
    is_bare_word && (spec.contains(':') || scheme_named_by(spec).is_some())
}

/// The usage of the store type a bare word names before any `?` or `:` (`mem` gives `mem:`,
/// `flatfs?sync=true` gives `flatfs:PATH`), if it names one.
fn scheme_named_by(word: &str) -> Option<&'static str> {
    let name = word.split(['?', ':']).next().unwrap_or(word);
    if name == "mount" {
        return Some("mount:/PREFIX=SPEC;...");
    }
    SCHEMES.iter().find(|s| s.name == name).map(|s| s.usage)
}

fn bare_word_error(word: &str) -> Error {
    if let Some(usage) = scheme_named_by(word) {
        return invalid(format!(
            "{word:?} names no directory here; did you mean {usage}? A store type is followed by \
             a colon; a new repository called {word} is ./{word} or dir:{word}"
        ));
    }
    invalid(format!(
        "{word:?} names no directory here; did you mean flatfs:{word} (a go-ds-flatfs directory)? \
         To create a new dsfs repository, give a path (./{word}) or dir:{word}"
    ))
}

fn non_empty_path(what: &str, arg: &str) -> Result<PathBuf> {
    if arg.is_empty() {
        Err(invalid(format!("{what}: needs a path")))
    } else {
        Ok(PathBuf::from(arg))
    }
}

/// Parses a shard function, in full (`/repo/flatfs/shard/v1/next-to-last/2`) or short
/// (`next-to-last/2`) form.
fn parse_shard(text: &str) -> Result<ShardFn> {
    let full = if text.starts_with('/') {
        text.to_owned()
    } else {
        format!("/repo/flatfs/shard/v1/{text}")
    };
    ShardFn::parse(&full).map_err(|e| invalid(format!("shard function {text:?}: {e}")))
}

fn parse_bool(name: &str, value: &str) -> Result<bool> {
    match value {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(invalid(format!(
            "option {name} takes true or false, not {value:?}"
        ))),
    }
}

/// A store opened from a spec: the indexed store and what opening it repaired.
pub struct Opened {
    /// The store, with its index.
    pub store: Arc<IndexedStore>,
    /// A one-line description for messages (`redb /x/values.redb, index /x/index.redb`).
    pub description: String,
    /// What the automatic reconcile after an unclean stop changed, if it ran.
    pub reconciled: Option<Report>,
    /// What was carried over when a damaged index was moved aside and rebuilt, if it was.
    pub rebuilt: Option<Salvaged>,
    /// The parts of the repository that were missing and were made anew, empty
    /// ([`OpenMode::drop_missing`]); their keys are still in the index.
    pub made_anew: Vec<MissingPart>,
}

/// How to open a store.
#[derive(Clone, Copy, Debug, Default)]
pub struct OpenMode {
    /// Leave the index as it is even after an unclean stop (for `fsck`, which reports drift).
    pub no_reconcile: bool,
    /// Show a progress bar on standard error (if it is a terminal) while the index is built.
    pub progress: bool,
    /// Create the stores the spec names where they are missing (or an empty directory or
    /// file), and an index named by `index=PATH` that is missing; without it such a spec is
    /// refused ([`absent_paths`], [`absent_index`]).
    pub create: bool,
    /// Build an index named by `index=PATH` that is missing (`dsfs reindex`, which builds the
    /// index from the store anyway).
    pub rebuild_index: bool,
    /// Make an empty store for each part of an existing repository that is missing
    /// ([`missing_parts`]), accepting that the keys it held are gone (`dsfs fsck --repair
    /// --drop-missing`, which then removes them from the index); without it such a repository
    /// is refused.
    pub drop_missing: bool,
}

/// A store of an existing repository that is missing or empty (see [`missing_parts`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MissingPart {
    /// The key prefix whose values the part holds (its mountpoint in `dsfs.json`).
    pub prefix: Key,
    /// The prefixes of the repository's other parts nested below `prefix` (their keys are not
    /// this part's).
    pub nested: Vec<Key>,
    /// Where the part should be, and what is there instead.
    pub absent: Absent,
}

/// A local path a store lives in that holds no store yet (see [`absent_paths`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Absent {
    /// The path.
    pub path: PathBuf,
    /// What is there instead of a store.
    pub found: Found,
}

/// What an [`Absent`] path holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Found {
    /// Nothing: the path does not exist.
    Nothing,
    /// An empty directory.
    EmptyDir,
    /// An empty file.
    EmptyFile,
}

/// The local paths that `spec`'s stores live in and that hold nothing yet: missing, or an
/// empty directory or file. Opening such a spec creates a store there, which [`open`] does
/// only with [`OpenMode::create`]. Creates and writes nothing; the spec files it reads
/// (`json:` files, a Kubo `datastore_spec`, a repository's `dsfs.json`) are read as [`open`]
/// reads them, with the same errors. Remote stores (`rados:`, `motr:`), `mem:`, `spdk:` images
/// and index files are not looked at.
pub fn absent_paths(spec: &StoreSpec) -> Result<Vec<Absent>> {
    let mut out = Vec::new();
    match &spec.kind {
        SpecKind::Mem | SpecKind::Rados(_) | SpecKind::Spdk(_) | SpecKind::Motr(_) => {}
        SpecKind::Redb(path) | SpecKind::Flatfs(path) => push_absent(path, &mut out),
        SpecKind::Mount(children) => {
            for (_, child) in children {
                out.extend(absent_paths(child)?);
            }
        }
        SpecKind::Json(file) => {
            let tree = load_tree(file, "")?;
            TreeOpener::for_check(file.parent().unwrap_or(Path::new(".")), true)
                .absent(&tree, &mut out)?;
        }
        SpecKind::Kubo(ipfs_path) => {
            let tree = load_tree(&ipfs_path.join("datastore_spec"), KUBO_HINT)?;
            TreeOpener::for_check(ipfs_path, false).absent(&tree, &mut out)?;
        }
        SpecKind::Repo(dir) => {
            push_absent(dir, &mut out);
            // A directory with entries but no dsfs.json is refused by `open` as not a
            // repository; one with a dsfs.json whose creation was interrupted has its stores'
            // paths here too (`create` finishes it). Those of a repository that was used are
            // `missing_parts` instead.
            if out.is_empty() && dir.join(REPO_FILE).exists() {
                let (parts, unborn) = repo_parts(spec, dir)?;
                if unborn {
                    out.extend(parts.into_iter().map(|p| p.absent));
                }
            }
        }
    }
    Ok(out)
}

/// The stores of an existing repository (`spec` names a directory with a `dsfs.json`) that
/// are missing or empty: a `blocks/` that was deleted, or that lives on a disk that is not
/// mounted (an empty mount point directory). Empty unless the repository was used: one with
/// no index file and none of its stores is a creation that was interrupted, which
/// [`absent_paths`] reports instead.
pub fn missing_parts(spec: &StoreSpec) -> Result<Vec<MissingPart>> {
    match &spec.kind {
        SpecKind::Repo(dir) if dir.join(REPO_FILE).exists() => {
            let (parts, unborn) = repo_parts(spec, dir)?;
            Ok(if unborn { Vec::new() } else { parts })
        }
        _ => Ok(Vec::new()),
    }
}

/// The missing stores of the repository in `dir`, and whether its creation was interrupted
/// (no index file, no store there at all).
fn repo_parts(spec: &StoreSpec, dir: &Path) -> Result<(Vec<MissingPart>, bool)> {
    let repo = Repo::load(dir)?;
    let ds = repo.datastore_node()?;
    let mut all = Vec::new();
    TreeOpener::for_check(dir, true).parts(ds, "/", &mut all)?;
    let prefixes: Vec<Key> = all.iter().map(|(k, _)| k.clone()).collect();
    let missing: Vec<MissingPart> = all
        .iter()
        .filter_map(|(prefix, path)| {
            let mut one = Vec::new();
            push_absent(path, &mut one);
            let absent = one.pop()?;
            let nested = prefixes
                .iter()
                .filter(|p| *p != prefix && prefix.is_ancestor_of(p))
                .cloned()
                .collect();
            Some(MissingPart {
                prefix: prefix.clone(),
                nested,
                absent,
            })
        })
        .collect();
    let index = spec.index.clone().unwrap_or_else(|| repo.index_path());
    let no_index = matches!(
        std::fs::metadata(&index),
        Err(ref e) if e.kind() == std::io::ErrorKind::NotFound
    );
    let unborn = no_index
        && missing.len() == all.len()
        && missing.iter().all(|m| m.absent.found == Found::Nothing);
    Ok((missing, unborn))
}

/// The index file `index=PATH` names, if it is missing (or an empty file): opening the spec
/// would build a new one from the store, which [`open`] does only when it creates
/// ([`OpenMode::create`]) or rebuilds ([`OpenMode::rebuild_index`]). `None` for an index in
/// its default place and for the local index of a shared cluster store (`rados:`, `motr:`),
/// which is this host's cache of the cluster.
pub fn absent_index(spec: &StoreSpec) -> Option<Absent> {
    if matches!(spec.kind, SpecKind::Rados(_) | SpecKind::Motr(_)) {
        return None;
    }
    let mut out = Vec::new();
    push_absent(spec.index.as_ref()?, &mut out);
    out.pop()
}

/// The local index file `spec` uses when it is not a repository's own (which lives in the
/// repository): its `index=PATH`, or the default place beside or inside the store. `None` for
/// `mem:` and for cluster stores without `index=`.
pub fn index_path(spec: &StoreSpec) -> Option<PathBuf> {
    if let Some(p) = &spec.index {
        return Some(p.clone());
    }
    match &spec.kind {
        SpecKind::Redb(p) => Some(append_ext(p, "index")),
        SpecKind::Flatfs(p) => Some(p.join(FLATFS_INDEX)),
        SpecKind::Json(f) => Some(append_ext(f, "index.redb")),
        SpecKind::Kubo(p) => Some(p.join("dsfs-index.redb")),
        SpecKind::Spdk(s) => Some(s.default_index()),
        SpecKind::Mem
        | SpecKind::Mount(_)
        | SpecKind::Repo(_)
        | SpecKind::Rados(_)
        | SpecKind::Motr(_) => None,
    }
}

/// Where an open with [`OpenMode::create`] would create something, recorded before it, so
/// that a caller whose next step fails (a mount) can remove what the open made.
#[derive(Debug)]
pub struct Creation {
    /// Each path that held nothing (or an empty directory or file) before the open.
    made: Vec<Made>,
}

/// One path [`Creation`] records.
#[derive(Debug)]
struct Made {
    /// The store (or index file) path.
    path: PathBuf,
    /// What it held before the open.
    found: Found,
    /// The missing directories above `path`, nearest first: the open makes them too.
    parents: Vec<PathBuf>,
}

impl Made {
    /// The highest path the open makes for this one.
    fn top(&self) -> &Path {
        self.parents.last().unwrap_or(&self.path)
    }
}

impl Creation {
    /// Records what `spec`'s open with `create` would make: its [`absent_paths`] and a missing
    /// index file, each with the missing directories above it (the open makes the
    /// directories above a new store too).
    pub fn before(spec: &StoreSpec) -> Result<Creation> {
        let mut absent = absent_paths(spec)?;
        if let Some(index) = index_path(spec) {
            push_absent(&index, &mut absent);
        }
        let mut made: Vec<Made> = absent
            .into_iter()
            .map(|a| {
                let mut parents = Vec::new();
                if a.found == Found::Nothing {
                    let mut here = a.path.as_path();
                    while let Some(parent) = here.parent()
                        && !parent.as_os_str().is_empty()
                        && matches!(
                            std::fs::symlink_metadata(parent),
                            Err(ref e) if e.kind() == std::io::ErrorKind::NotFound
                        )
                    {
                        parents.push(parent.to_path_buf());
                        here = parent;
                    }
                }
                Made {
                    path: a.path,
                    found: a.found,
                    parents,
                }
            })
            .collect();
        // A path inside another recorded one goes with it.
        let all: Vec<PathBuf> = made.iter().map(|a| a.path.clone()).collect();
        made.retain(|a| !all.iter().any(|p| *p != a.path && a.path.starts_with(p)));
        Ok(Creation { made })
    }

    /// Whether the open is about to create anything.
    pub fn is_empty(&self) -> bool {
        self.made.is_empty()
    }

    /// Everything under the highest recorded paths now, with each entry's type: taken right
    /// after the open, to compare with what is there when the creation is undone.
    pub fn inventory(&self) -> Vec<(PathBuf, bool)> {
        let mut out = Vec::new();
        for a in &self.made {
            let mut todo = vec![a.top().to_path_buf()];
            while let Some(p) = todo.pop() {
                let Ok(meta) = std::fs::symlink_metadata(&p) else {
                    continue;
                };
                if meta.is_dir()
                    && let Ok(entries) = std::fs::read_dir(&p)
                {
                    todo.extend(entries.filter_map(|e| e.ok().map(|e| e.path())));
                }
                out.push((p, meta.is_dir()));
            }
        }
        out.sort();
        out.dedup();
        out
    }

    /// Takes back what the open made, if nothing else has appeared there since `inventory`
    /// was taken (compared with [`Creation::inventory`] now): a new store path is removed, a
    /// directory that was empty is emptied, a file that was empty is emptied, and then each
    /// missing directory above a new path is removed if it is empty (one that holds something
    /// the open did not make stays). Returns what it did, or why it left everything in place.
    pub fn undo(&self, inventory: &[(PathBuf, bool)]) -> std::result::Result<String, String> {
        let now = self.inventory();
        if let Some((extra, _)) = now.iter().find(|e| !inventory.contains(e)) {
            return Err(format!(
                "{} appeared after the store was created; leaving the new store in place",
                extra.display()
            ));
        }
        let mut done = Vec::new();
        for a in &self.made {
            let result = match a.found {
                Found::Nothing => match std::fs::symlink_metadata(&a.path) {
                    Ok(m) if m.is_dir() => std::fs::remove_dir_all(&a.path),
                    Ok(_) => std::fs::remove_file(&a.path),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(e),
                },
                Found::EmptyDir => std::fs::read_dir(&a.path).and_then(|entries| {
                    for e in entries {
                        let p = e?.path();
                        if std::fs::symlink_metadata(&p)?.is_dir() {
                            std::fs::remove_dir_all(&p)?;
                        } else {
                            std::fs::remove_file(&p)?;
                        }
                    }
                    Ok(())
                }),
                Found::EmptyFile => std::fs::OpenOptions::new()
                    .write(true)
                    .open(&a.path)
                    .and_then(|f| f.set_len(0)),
            };
            match result {
                Ok(()) if a.found == Found::Nothing => done.push(a.path.display().to_string()),
                Ok(()) => done.push(format!("{} (emptied again)", a.path.display())),
                Err(e) => return Err(format!("removing {}: {e}", a.path.display())),
            }
        }
        // Then the directories made above them, nearest first: only while empty, so that
        // whatever another process put in one meanwhile stays, with the directories above it.
        let mut parents_removed = Vec::new();
        let mut parents_kept = Vec::new();
        for a in &self.made {
            for dir in &a.parents {
                match std::fs::remove_dir(dir) {
                    Ok(()) => parents_removed.push(dir.display().to_string()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        parents_kept.push(format!("{} ({e})", dir.display()));
                        break;
                    }
                }
            }
        }
        let mut said = format!("removed the new store {}", done.join(", "));
        if !parents_removed.is_empty() {
            let s = if parents_removed.len() == 1 {
                "y"
            } else {
                "ies"
            };
            said.push_str(&format!(
                " and the director{s} made for it: {}",
                parents_removed.join(", ")
            ));
        }
        if !parents_kept.is_empty() {
            said.push_str(&format!(
                "; kept the directories made for it that hold something else: {}",
                parents_kept.join(", ")
            ));
        }
        Ok(said)
    }
}

/// What a new index lacks that the store's own index may have had.
const NEW_INDEX_LACKS: &str = "a new index built from the store has its keys and values, but \
     none of what only an index records: explicit empty directories, modes, owners, times, \
     xattrs, symlinks, special files, hard links";

/// The error for an `index=PATH` that names no index (see [`absent_index`]).
fn refuse_absent_index(absent: &Absent) -> Error {
    let what = match absent.found {
        Found::Nothing => "does not exist",
        Found::EmptyDir => "is an empty directory",
        Found::EmptyFile => "is an empty file",
    };
    Error::new(
        ErrorKind::NotFound,
        format!(
            "no index there: {} {what} ({NEW_INDEX_LACKS}). Check the index= path; to build a \
             new index there from the store, run 'dsfs --store SPEC reindex' (or pass --create)",
            absent.path.display()
        ),
    )
}

/// The error for a repository with [`missing_parts`]: names each part, the keys it held, and
/// the two ways forward.
fn refuse_missing(dir: &Path, missing: &[MissingPart]) -> Error {
    let what: Vec<String> = missing
        .iter()
        .map(|m| {
            let found = match m.absent.found {
                Found::Nothing => "does not exist",
                Found::EmptyDir => "is an empty directory (a disk that is not mounted?)",
                Found::EmptyFile => "is an empty file",
            };
            format!(
                "{} (the store of the keys under {}) {found}",
                m.absent.path.display(),
                m.prefix
            )
        })
        .collect();
    Error::new(
        ErrorKind::NotFound,
        format!(
            "the repository {} is missing part of its data: {}. If it was deleted or lives on a \
             disk that is not mounted, restore it (from a backup, or mount the disk) and run the \
             command again. To accept that the keys stored there are gone instead, run 'dsfs \
             --store {} fsck --repair --drop-missing': it makes an empty store there and removes \
             those keys from the index, saying how many. No other command (--create included) \
             makes it anew",
            dir.display(),
            what.join("; "),
            dir.display()
        ),
    )
}

/// Adds `path` to `out` if it does not exist or is an empty directory or empty file.
fn push_absent(path: &Path, out: &mut Vec<Absent>) {
    let found = match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Found::Nothing,
        // Unreadable: not absent; opening it reports why.
        Err(_) => return,
        Ok(meta) if meta.is_dir() => {
            match std::fs::read_dir(path).map(|mut entries| entries.next().is_none()) {
                Ok(true) => Found::EmptyDir,
                Ok(false) | Err(_) => return,
            }
        }
        Ok(meta) if meta.is_file() && meta.len() == 0 => Found::EmptyFile,
        Ok(_) => return,
    };
    out.push(Absent {
        path: path.to_path_buf(),
        found,
    });
}

/// The error for a spec whose stores are (partly) [`absent_paths`] when creating was not asked
/// for: names every path and how to create the store.
fn refuse_absent(absent: &[Absent]) -> Error {
    let what: Vec<String> = absent
        .iter()
        .map(|a| {
            let what = match a.found {
                Found::Nothing => "does not exist",
                Found::EmptyDir => "is an empty directory",
                Found::EmptyFile => "is an empty file",
            };
            format!("{} {what}", a.path.display())
        })
        .collect();
    Error::new(
        ErrorKind::NotFound,
        format!(
            "no store there: {}. Check the path; to create a new store, pass --create \
             (dsfs mount --create SPEC DIR, dsfs put --create ...) or run 'dsfs --store SPEC init'",
            what.join(", ")
        ),
    )
}

/// Opens the store a spec names, with its index. Without [`OpenMode::create`], a spec with
/// [`absent_paths`] is refused (`NotFound`) before anything is created.
pub fn open(spec: &StoreSpec, mode: OpenMode) -> Result<Opened> {
    let absent = absent_paths(spec)?;
    if !mode.create && !absent.is_empty() {
        return Err(refuse_absent(&absent));
    }
    if mode.create {
        // Every store is created with its missing parent directories, as a repository
        // always was: `flatfs:new/blocks` and `redb:new/v.redb` as well as `new/repo`.
        for a in &absent {
            make_parents(&a.path)?;
        }
        if let Some(index) = &spec.index {
            make_parents(index)?;
        }
    }
    let missing = missing_parts(spec)?;
    // (With drop_missing, the caller reports the parts made anew: [`Opened::made_anew`].)
    if let (SpecKind::Repo(dir), false, false) = (&spec.kind, missing.is_empty(), mode.drop_missing)
    {
        return Err(refuse_missing(dir, &missing));
    }
    if let Some(index) = absent_index(spec)
        && !mode.create
        && !mode.rebuild_index
    {
        return Err(refuse_absent_index(&index));
    }
    // Whether the stores were all there before this open: a new index of such a store may lack
    // what its old one recorded.
    let store_existed = absent.is_empty() && missing.is_empty();
    let index_options = IndexOptions {
        check_integrity: spec.check_integrity,
        ..IndexOptions::default()
    };
    let mut aside: Option<SetAside> = None;
    let mut open_index = |path: &Path, options: IndexOptions| -> Result<Index> {
        let mut gone = Vec::new();
        push_absent(path, &mut gone);
        let (index, set_aside) = open_or_set_aside(path, options)?;
        aside = set_aside;
        // An index in a flatfs directory, a redb store's or a Kubo repository's default place
        // is a cache of the store; one named by index= or a repository's own is not.
        let recorded = spec.index.is_some() || matches!(spec.kind, SpecKind::Repo(_));
        if !gone.is_empty() && store_existed && recorded && !mode.rebuild_index {
            log::warn!(
                "{}: there was no index there; building one from the store ({NEW_INDEX_LACKS})",
                path.display()
            );
        }
        Ok(index)
    };
    let (backend, index, description): (Arc<dyn Datastore>, Index, String) = match &spec.kind {
        SpecKind::Mem => (
            spec.open_simple()?,
            Index::in_memory(index_options)?,
            "in-memory store".to_owned(),
        ),
        SpecKind::Mount(children) => {
            let mut mounts = Vec::new();
            for (prefix, child) in children {
                mounts.push((prefix.clone(), child.open_simple()?));
            }
            let backend: Arc<dyn Datastore> = Arc::new(MountStore::new(mounts)?);
            let index = match &spec.index {
                Some(p) => open_index(p, index_options)?,
                None => Index::in_memory(index_options)?,
            };
            (
                backend,
                index,
                format!("mount of {} stores", children.len()),
            )
        }
        SpecKind::Json(file) => {
            let tree = load_tree(file, "")?;
            let base = file.parent().unwrap_or(Path::new("."));
            let opener = TreeOpener {
                base,
                contained: true,
                durable: spec.durable,
                check_integrity: spec.check_integrity,
            };
            let backend = opener.open(&tree).map_err(|e| e.context(file.display()))?;
            let index_path = spec
                .index
                .clone()
                .unwrap_or_else(|| append_ext(file, "index.redb"));
            let index = open_index(&index_path, index_options)?;
            (
                backend,
                index,
                format!("{}, index {}", file.display(), index_path.display()),
            )
        }
        SpecKind::Redb(path) => {
            let backend = spec.open_simple()?;
            let index_path = spec
                .index
                .clone()
                .unwrap_or_else(|| append_ext(path, "index"));
            let index = open_index(&index_path, index_options)?;
            (
                backend,
                index,
                format!("redb {}, index {}", path.display(), index_path.display()),
            )
        }
        SpecKind::Flatfs(path) => {
            let backend = spec.open_simple()?;
            let index_path = spec
                .index
                .clone()
                .unwrap_or_else(|| path.join(FLATFS_INDEX));
            let index = open_index(&index_path, index_options)?;
            (
                backend,
                index,
                format!("flatfs {}, index {}", path.display(), index_path.display()),
            )
        }
        SpecKind::Kubo(ipfs_path) => {
            let tree = load_tree(&ipfs_path.join("datastore_spec"), KUBO_HINT)?;
            let opener = TreeOpener {
                base: ipfs_path,
                contained: false,
                durable: spec.durable,
                check_integrity: spec.check_integrity,
            };
            let backend = opener.open(&tree)?;
            let index_path = spec
                .index
                .clone()
                .unwrap_or_else(|| ipfs_path.join("dsfs-index.redb"));
            let index = open_index(&index_path, index_options)?;
            (
                backend,
                index,
                format!(
                    "Kubo repository {}, index {}",
                    ipfs_path.display(),
                    index_path.display()
                ),
            )
        }
        SpecKind::Repo(dir) => {
            let repo = Repo::open_or_create(dir)?;
            // A repository keeps room to commit and to remove files on a full disk.
            let index_options = IndexOptions {
                reserve: Some(crate::space::DEFAULT_RESERVE),
                ..index_options
            };
            let index_path = spec.index.clone().unwrap_or_else(|| repo.index_path());
            let index = open_index(&index_path, index_options)?;
            let backend = repo.open_datastore(spec)?;
            (backend, index, format!("repository {}", dir.display()))
        }
        SpecKind::Motr(m) => {
            let backend = m.open(spec.durable)?;
            let (index, where_) = match &spec.index {
                Some(p) => (open_index(p, index_options)?, p.display().to_string()),
                None => (Index::in_memory(index_options)?, "in memory".to_owned()),
            };
            (backend, index, format!("{}, index {where_}", m.describe()))
        }
        SpecKind::Rados(r) => {
            let backend = open_rados(r)?;
            let (index, where_) = match &spec.index {
                Some(p) => (open_index(p, index_options)?, p.display().to_string()),
                None => (Index::in_memory(index_options)?, "in memory".to_owned()),
            };
            (
                backend,
                index,
                format!(
                    "rados pool {} namespace {}, index {where_}",
                    r.pool, r.prefix
                ),
            )
        }
        SpecKind::Spdk(s) => {
            let (store, recovery) = s.open()?;
            let index_path = spec.index.clone().unwrap_or_else(|| s.default_index());
            let index = open_index(&index_path, index_options)?;
            (
                Arc::new(store) as Arc<dyn Datastore>,
                index,
                format!(
                    "spdk blobstore {} ({recovery:?}), index {}",
                    s.image.display(),
                    index_path.display()
                ),
            )
        }
    };
    // A go-ds-motr index is shared (go-ds-motr, other hosts) but has no segment stamps to follow
    // cheaply: it is reconciled with the whole store at every open, not only after an unclean
    // stop. (RADOS and native Motr are followed through their stamps by `open_following`.)
    let reconcile_at_open = matches!(
        &spec.kind,
        SpecKind::Motr(m) if m.layout == crate::backend::motr::Layout::GoDsMotr
    );
    if mode.drop_missing && !missing.is_empty() {
        // The empty stores just made have identities of their own: the index is kept for the
        // repository (the check that follows drops the keys they held), not rebuilt from the
        // store as the index of another one, which would lose what only it records.
        index.record_follow_state(backend.identity()?.as_deref(), &[], false)?;
    }
    let index = Arc::new(index);
    let rebuilt = match &aside {
        Some(a) => Some(rebuild(&index, backend.as_ref(), a)?.1),
        None => None,
    };
    let (store, reconciled) = if mode.no_reconcile || rebuilt.is_some() {
        if rebuilt.is_none() {
            let mut bar = BuildProgress::new(mode.progress);
            crate::index::follow::build_if_needed(&index, backend.as_ref(), &mut |n| {
                bar.update(n)
            })?;
            bar.finish();
        }
        (IndexedStore::new(backend, index), None)
    } else {
        let unclean = index.was_unclean();
        let mut bar = BuildProgress::new(mode.progress);
        let (store, prepared) = open_following(backend, index, &mut |n| bar.update(n))?;
        bar.finish();
        // A shared store (RADOS: other hosts write it) is followed like a flatfs directory:
        // `open_following` re-read the shards whose stamps changed while this index was closed.
        let followed_whole = matches!(prepared, Prepared::Reconciled(_) | Prepared::Built { .. });
        let report = prepared.unclean_repair(unclean);
        // Routine for a shared store, so not reported as a repair.
        if reconcile_at_open && !followed_whole {
            let r = crate::index::reconcile::check(
                store.index(),
                store.backend().as_ref(),
                true,
                &mut |_| {},
            )?;
            log::info!("the index follows the shared store: {}", r.summary());
        }
        (store, report)
    };
    Ok(Opened {
        store: Arc::new(store),
        description,
        reconciled,
        rebuilt,
        made_anew: if mode.drop_missing {
            missing
        } else {
            Vec::new()
        },
    })
}

/// The progress bar of an index build: shown on a terminal once the build has taken half a
/// second, never otherwise.
struct BuildProgress {
    enabled: bool,
    start: std::time::Instant,
    bar: Option<indicatif::ProgressBar>,
}

impl BuildProgress {
    fn new(enabled: bool) -> BuildProgress {
        BuildProgress {
            enabled: enabled && std::io::IsTerminal::is_terminal(&std::io::stderr()),
            start: std::time::Instant::now(),
            bar: None,
        }
    }

    fn update(&mut self, n: u64) {
        if !self.enabled {
            return;
        }
        if self.bar.is_none() && self.start.elapsed() >= std::time::Duration::from_millis(500) {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} indexing the store: {pos} keys ({per_sec}, {elapsed})",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
            );
            bar.enable_steady_tick(std::time::Duration::from_millis(200));
            self.bar = Some(bar);
        }
        if let Some(bar) = &self.bar {
            bar.set_position(n);
        }
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

#[cfg(feature = "rados")]
fn open_rados(r: &RadosSpec) -> Result<Arc<dyn Datastore>> {
    use crate::backend::rados::{RadosOptions, RadosStore};
    let options = RadosOptions {
        conf: r.conf.clone(),
        id: r.id.clone(),
        namespace: r.prefix.clone(),
        timeout: std::time::Duration::from_secs(r.timeout_secs),
        ..RadosOptions::new(r.pool.clone())
    };
    Ok(Arc::new(RadosStore::open(options)?))
}

#[cfg(not(feature = "rados"))]
fn open_rados(_: &RadosSpec) -> Result<Arc<dyn Datastore>> {
    Err(Error::new(
        ErrorKind::Unsupported,
        "this dsfs was built without RADOS support (build with: cargo build --features rados)",
    ))
}

fn redb_options(durable: bool, check_integrity: bool) -> RedbOptions {
    RedbOptions {
        durable_puts: durable,
        check_integrity,
        ..RedbOptions::default()
    }
}

fn append_ext(path: &Path, ext: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".");
    s.push(ext);
    PathBuf::from(s)
}

/// A repository directory and its parsed `dsfs.json`.
pub struct Repo {
    dir: PathBuf,
    config: Value,
}

impl Repo {
    /// The default layout of a new repository.
    ///
    /// `/blocks` is a go-ds-flatfs directory in Kubo's layout (next-to-last/2), so IPFS blocks
    /// are stored exactly where Kubo keeps them. Everything else goes to a tiered store: values
    /// under 64 KiB inline in redb (cheap small files and any name), larger ones as plain files
    /// that the kernel can read directly (passthrough). See `docs/ARCHITECTURE.md`.
    pub fn default_config() -> Value {
        json!({
            "dsfs_repo": REPO_VERSION,
            "index": "index.redb",
            "datastore": {
                "type": "mount",
                "mounts": [
                    {
                        "mountpoint": "/blocks",
                        "type": "flatfs",
                        "path": "blocks",
                        "shardFunc": ShardFn::IPFS_DEFAULT.id(),
                        "sync": false
                    },
                    {
                        "mountpoint": "/",
                        "type": "tiered",
                        "path": "data",
                        "threshold": crate::backend::tiered::DEFAULT_THRESHOLD
                    }
                ]
            }
        })
    }

    /// Opens the repository in `dir`, creating it with the default layout when `dir` is missing
    /// or empty. ([`open`] comes here only with [`OpenMode::create`] or after
    /// [`absent_paths`] found the directory holds something.)
    pub fn open_or_create(dir: &Path) -> Result<Repo> {
        match Repo::load(dir) {
            Err(e) if e.kind() == ErrorKind::NotFound => Repo::create(dir),
            other => other,
        }
    }

    /// Reads the repository file of `dir` (`NotFound` if it has none).
    fn load(dir: &Path) -> Result<Repo> {
        let config = load_tree(&dir.join(REPO_FILE), "")?;
        Repo::from_config(dir, config)
    }

    fn create(dir: &Path) -> Result<Repo> {
        match std::fs::read_dir(dir) {
            Ok(mut entries) => {
                if entries.next().is_some() {
                    return Err(Error::new(
                        ErrorKind::InvalidArgument,
                        format!(
                            "{} is not empty and is not a dsfs repository (it has no {REPO_FILE}); \
                             give an empty or new directory",
                            dir.display()
                        ),
                    ));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(dir)
                    .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
            }
            Err(e) => return Err(Error::io(format!("reading {}", dir.display()), e)),
        }
        let config = Repo::default_config();
        let text = serde_json::to_vec_pretty(&config)
            .map_err(|e| Error::with_source(ErrorKind::Io, "encoding the repository file", e))?;
        write_file_durably(&dir.join(REPO_FILE), &text)?;
        log::info!("created a dsfs repository in {}", dir.display());
        Repo::from_config(dir, config)
    }

    fn from_config(dir: &Path, config: Value) -> Result<Repo> {
        match config.get("dsfs_repo").and_then(Value::as_u64) {
            Some(REPO_VERSION) => {}
            Some(v) => {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    format!(
                        "{} has repository version {v}; this dsfs reads version {REPO_VERSION}",
                        dir.join(REPO_FILE).display()
                    ),
                ));
            }
            None => {
                return Err(Error::new(
                    ErrorKind::Corrupt,
                    format!("{} has no dsfs_repo version", dir.join(REPO_FILE).display()),
                ));
            }
        }
        let repo = Repo {
            dir: dir.to_path_buf(),
            config,
        };
        // Validate the paths now, so a bad file is reported before anything is opened.
        repo.contained_path(repo.config.get("index"), "index")?;
        Ok(repo)
    }

    /// The repository's index file.
    pub fn index_path(&self) -> PathBuf {
        self.contained_path(self.config.get("index"), "index")
            .unwrap_or_else(|_| self.dir.join("index.redb"))
    }

    /// A path from the repository file, which must be relative and stay inside the directory.
    fn contained_path(&self, value: Option<&Value>, what: &str) -> Result<PathBuf> {
        let text = value.and_then(Value::as_str).ok_or_else(|| {
            Error::new(
                ErrorKind::Corrupt,
                format!(
                    "{}: {what} must be a path string",
                    self.dir.join(REPO_FILE).display()
                ),
            )
        })?;
        contained_join(&self.dir, text).ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidArgument,
                format!(
                    "{}: {what} path {text:?} must be relative and inside the repository",
                    self.dir.join(REPO_FILE).display()
                ),
            )
        })
    }

    /// Opens the datastore the repository file describes.
    pub fn open_datastore(&self, spec: &StoreSpec) -> Result<Arc<dyn Datastore>> {
        self.open_config(self.datastore_node()?, spec)
    }

    /// The repository file's `datastore` tree.
    fn datastore_node(&self) -> Result<&Value> {
        self.config.get("datastore").ok_or_else(|| {
            Error::new(
                ErrorKind::Corrupt,
                format!("{} names no datastore", self.dir.join(REPO_FILE).display()),
            )
        })
    }

    fn open_config(&self, ds: &Value, spec: &StoreSpec) -> Result<Arc<dyn Datastore>> {
        TreeOpener {
            base: &self.dir,
            contained: true,
            durable: spec.durable,
            check_integrity: spec.check_integrity,
        }
        .open(ds)
        .map_err(|e| e.context(self.dir.join(REPO_FILE).display()))
    }
}

/// `base` joined with the path `text` from a store description, if `text` is relative and
/// names something inside `base` (no `..`, no root): the one check for repositories'
/// `dsfs.json` and for `json:` spec files.
fn contained_join(base: &Path, text: &str) -> Option<PathBuf> {
    let rel = Path::new(text);
    let inside = !text.is_empty()
        && rel
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    inside.then(|| base.join(rel))
}

/// What ends the error of a Kubo repository whose `datastore_spec` cannot be read.
const KUBO_HINT: &str = " (is this a Kubo repository?)";

/// Reads and parses a JSON spec file (a `json:` file, a Kubo `datastore_spec`, a repository's
/// `dsfs.json`); `hint` ends a read error's message.
fn load_tree(file: &Path, hint: &str) -> Result<Value> {
    let text = read_spec_file(file, hint)?;
    serde_json::from_slice(&text).map_err(|e| {
        Error::with_source(
            ErrorKind::Corrupt,
            format!("{} is not valid JSON", file.display()),
            e,
        )
    })
}

/// Creates the missing directories above `path` (not `path` itself), highest first, syncing
/// the directory that holds each new one so that they outlive a power loss. An error names the
/// step (creating or syncing), the directory and `path`.
fn make_parents(path: &Path) -> Result<()> {
    let mut missing = Vec::new();
    let mut dir = crate::sys::parent_dir(path);
    while !dir.exists() {
        missing.push(dir);
        match dir.parent() {
            Some(up) if !up.as_os_str().is_empty() => dir = up,
            _ => break,
        }
    }
    for dir in missing.into_iter().rev() {
        match std::fs::create_dir(dir) {
            Ok(()) => {}
            // Made meanwhile by another process: synced below all the same.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => {}
            Err(e) => {
                return Err(Error::io(
                    format!(
                        "creating directory {} for {}",
                        dir.display(),
                        path.display()
                    ),
                    e,
                ));
            }
        }
        let above = crate::sys::parent_dir(dir);
        crate::sys::sync_dir(above).map_err(|e| {
            Error::io(
                format!(
                    "syncing directory {} after creating {} in it, for {}",
                    above.display(),
                    dir.display(),
                    path.display()
                ),
                e,
            )
        })?;
    }
    Ok(())
}

/// The index file inside a flatfs directory (a dot-name, which flatfs readers skip).
pub const FLATFS_INDEX: &str = ".dsfs.index.redb";

fn open_flatfs(
    path: &Path,
    shard: ShardFn,
    sync: bool,
    encode: bool,
) -> Result<Arc<dyn Datastore>> {
    Ok(Arc::new(FlatFsStore::create_or_open(
        path,
        shard,
        FlatFsOptions {
            sync,
            encode_keys: encode,
            ..FlatFsOptions::default()
        },
    )?))
}

/// Opens a datastore tree in the JSON form of Kubo's `Datastore.Spec`.
struct TreeOpener<'a> {
    /// Relative paths are resolved against this directory.
    base: &'a Path,
    /// Paths must be relative and stay inside `base` (dsfs repositories and `json:` files;
    /// a Kubo repository's own spec may name any path, as Kubo allows).
    contained: bool,
    /// fsync every redb write.
    durable: bool,
    /// Verify redb files when opening them.
    check_integrity: bool,
}

impl<'a> TreeOpener<'a> {
    /// An opener only used to find [`absent_paths`] (opens nothing).
    fn for_check(base: &'a Path, contained: bool) -> TreeOpener<'a> {
        TreeOpener {
            base,
            contained,
            durable: false,
            check_integrity: false,
        }
    }

    /// Adds the paths of the stores in `node` that [`TreeOpener::open`] would create to `out`.
    /// A node it cannot open is left to `open` to report.
    fn absent(&self, node: &Value, out: &mut Vec<Absent>) -> Result<()> {
        let mut parts = Vec::new();
        self.parts(node, "/", &mut parts)?;
        for (_, path) in parts {
            push_absent(&path, out);
        }
        Ok(())
    }

    /// Adds the local stores in `node` (mounted at `prefix`) to `out`: the key prefix each one
    /// holds and its path.
    fn parts(&self, node: &Value, prefix: &str, out: &mut Vec<(Key, PathBuf)>) -> Result<()> {
        match node.get("type").and_then(Value::as_str).unwrap_or("") {
            "mount" => {
                for m in node
                    .get("mounts")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let point = m
                        .get("mountpoint")
                        .and_then(Value::as_str)
                        .unwrap_or(prefix);
                    self.parts(m, point, out)?;
                }
            }
            "measure" => {
                if let Some(child) = node.get("child") {
                    self.parts(child, prefix, out)?;
                }
            }
            "flatfs" | "redb" | "tiered" => out.push((Key::new(prefix), self.path(node)?)),
            _ => {}
        }
        Ok(())
    }

    fn path(&self, node: &Value) -> Result<PathBuf> {
        let text = node
            .get("path")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| invalid("a datastore needs a \"path\""))?;
        if !self.contained {
            return Ok(self.base.join(text));
        }
        contained_join(self.base, text).ok_or_else(|| {
            invalid(format!(
                "path {text:?} must be relative and inside {}",
                self.base.display()
            ))
        })
    }

    fn open(&self, node: &Value) -> Result<Arc<dyn Datastore>> {
        let ty = node.get("type").and_then(Value::as_str).unwrap_or("");
        match ty {
            "mount" => {
                let mounts = node
                    .get("mounts")
                    .and_then(Value::as_array)
                    .ok_or_else(|| invalid("a mount needs a \"mounts\" list"))?;
                let mut children = Vec::new();
                for m in mounts {
                    let point = m
                        .get("mountpoint")
                        .and_then(Value::as_str)
                        .ok_or_else(|| invalid("every mount needs a \"mountpoint\""))?;
                    children.push((Key::new(point), self.open(m)?));
                }
                Ok(Arc::new(MountStore::new(children)?))
            }
            "measure" => {
                let child = node
                    .get("child")
                    .ok_or_else(|| invalid("a measure datastore needs a \"child\""))?;
                self.open(child)
            }
            "flatfs" => {
                let shard = match node.get("shardFunc").and_then(Value::as_str) {
                    Some(t) => parse_shard(t)?,
                    None => ShardFn::IPFS_DEFAULT,
                };
                let sync = node.get("sync").and_then(Value::as_bool).unwrap_or(false);
                let encode = node.get("encode").and_then(Value::as_bool).unwrap_or(false);
                open_flatfs(&self.path(node)?, shard, sync, encode)
            }
            "redb" => {
                let durable = self.durable
                    || node
                        .get("durable")
                        .and_then(Value::as_bool)
                        .unwrap_or(false);
                let options = redb_options(durable, self.check_integrity);
                Ok(Arc::new(
                    RedbStore::open_salvaging(self.path(node)?, options)?.0,
                ))
            }
            "tiered" => {
                let dir = self.path(node)?;
                let new = !dir.exists();
                std::fs::create_dir_all(&dir)
                    .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
                if new {
                    // Its entry in the repository, so that the store outlives a power loss.
                    let above = crate::sys::parent_dir(&dir);
                    crate::sys::sync_dir(above).map_err(|e| {
                        Error::io(
                            format!(
                                "syncing directory {} after creating {} in it",
                                above.display(),
                                dir.display()
                            ),
                            e,
                        )
                    })?;
                }
                let threshold = node
                    .get("threshold")
                    .and_then(Value::as_u64)
                    .unwrap_or(crate::backend::tiered::DEFAULT_THRESHOLD);
                Ok(Arc::new(TieredStore::open(
                    &dir.join("records.redb"),
                    &dir.join("files"),
                    TieredOptions {
                        threshold,
                        redb: RedbOptions {
                            cache_size: TieredOptions::default().redb.cache_size,
                            ..redb_options(self.durable, self.check_integrity)
                        },
                        sync_files: false,
                    },
                )?))
            }
            "mem" => Ok(Arc::new(MemStore::new())),
            "levelds" | "pebbleds" | "badgerds" => Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "datastore type {ty:?} is not supported by dsfs (supported: mount, measure, flatfs, redb, tiered, mem); \
                     mount the flatfs part directly, e.g. flatfs:IPFS_PATH/blocks"
                ),
            )),
            other => Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "datastore type {other:?} is not supported (supported: mount, measure, flatfs, redb, tiered, mem)"
                ),
            )),
        }
    }
}

/// Writes `bytes` to `path` through a temporary file, fsync and rename, then fsyncs the
/// directory, so the file is either absent or complete after a crash.
pub fn write_file_durably(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let (mut file, tmp) = crate::datastore::stage::create_unique(dir, ".dsfs-tmp")?;
    let result = (|| {
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(format!("writing {}", path.display()), e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse() {
        assert_eq!(StoreSpec::parse("mem:").unwrap().kind, SpecKind::Mem);
        assert_eq!(
            StoreSpec::parse("redb:/x/v.redb").unwrap().kind,
            SpecKind::Redb("/x/v.redb".into())
        );
        let s = StoreSpec::parse("redb:v.redb?index=/i.redb&durable=true").unwrap();
        assert_eq!(s.index, Some("/i.redb".into()));
        assert!(s.durable);
        assert_eq!(
            StoreSpec::parse("/data/repo").unwrap().kind,
            SpecKind::Repo("/data/repo".into())
        );
        assert_eq!(
            StoreSpec::parse("./a:b").unwrap().kind,
            SpecKind::Repo("./a:b".into())
        );
        assert_eq!(
            StoreSpec::parse("dir:a:b").unwrap().kind,
            SpecKind::Repo("a:b".into())
        );
        for bad in [
            "",
            "nope:x",
            "redb:",
            "mem:x",
            "redb:x?durable=maybe",
            "redb:x?colour=red",
        ] {
            let err = StoreSpec::parse(bad).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{bad}");
        }
    }

    #[test]
    fn rados_specs_parse_with_their_own_options_only() {
        let s = StoreSpec::parse(
            "rados:pool1?conf=/c/ceph.conf&id=dsfs&prefix=team&timeout=5&index=/i.redb",
        )
        .unwrap();
        assert_eq!(
            s.kind,
            SpecKind::Rados(RadosSpec {
                pool: "pool1".into(),
                conf: "/c/ceph.conf".into(),
                id: "dsfs".into(),
                prefix: "team".into(),
                timeout_secs: 5,
            })
        );
        assert_eq!(s.index, Some("/i.redb".into()));
        let d = StoreSpec::parse("rados:p").unwrap();
        assert!(matches!(d.kind, SpecKind::Rados(RadosSpec { ref id, .. }) if id == "admin"));
        for bad in [
            "rados:",
            "rados:a/b",
            "rados:p?timeout=0",
            "rados:p?timeout=soon",
            "rados:p?shard=next-to-last/2",
            "redb:/x?conf=/c",
            "flatfs:/x?prefix=a",
        ] {
            let err = StoreSpec::parse(bad).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{bad}");
        }
        let err = StoreSpec::parse("nope:x").unwrap_err();
        assert!(err.to_string().contains("rados:POOL"), "{err}");
    }

    #[cfg(not(feature = "rados"))]
    #[test]
    fn a_rados_spec_without_the_feature_says_how_to_build_it() {
        let spec = StoreSpec::parse("rados:p").unwrap();
        let err = open(&spec, creating()).err().unwrap();
        assert_eq!(err.kind(), ErrorKind::Unsupported);
        assert!(err.to_string().contains("--features rados"), "{err}");
    }

    #[test]
    fn a_store_type_without_its_colon_is_questioned_any_other_bare_word_is_a_path() {
        // Relative to the test's working directory, where none of these exists. A bare word
        // is a path, as `mount` and `cp` take theirs: `dsfs mount --create repo mnt` makes
        // ./repo. (Opening it without --create is still refused while it is missing: see
        // `absent_paths`.)
        for word in ["no-such-repository-here", "repo", "my.repo", "flatfs2"] {
            assert!(!Path::new(word).exists());
            assert_eq!(
                StoreSpec::parse(word).unwrap().kind,
                SpecKind::Repo(word.into()),
                "{word}"
            );
        }
        // But not a store type, a store type with options, or a word with a colon that is no
        // store type: these ask.
        for word in [
            "flatfs",
            "redb",
            "mem",
            "mount",
            "flatfs?sync=true",
            "My:repo",
        ] {
            assert!(!Path::new(word).exists());
            let err = StoreSpec::parse(word).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{word}");
            assert!(err.to_string().contains("did you mean"), "{err}");
            assert!(!Path::new(word).exists());
        }
        let hint = |word: &str| StoreSpec::parse(word).unwrap_err().to_string();
        assert!(hint("flatfs").contains("did you mean flatfs:PATH?"));
        assert!(hint("flatfs?sync=true").contains("did you mean flatfs:PATH?"));
        // mem: takes no path, so its hint offers none.
        assert!(
            hint("mem").contains("did you mean mem:?"),
            "{}",
            hint("mem")
        );
        assert!(hint("mem").contains("./mem or dir:mem"), "{}", hint("mem"));
        // A path, or dir:, still names a repository to create.
        assert_eq!(
            StoreSpec::parse("./new-repo").unwrap().kind,
            SpecKind::Repo("./new-repo".into())
        );
        assert_eq!(
            StoreSpec::parse("dir:new-repo").unwrap().kind,
            SpecKind::Repo("new-repo".into())
        );
        // An existing directory may be named by a bare word.
        assert_eq!(
            StoreSpec::parse("src").unwrap().kind,
            SpecKind::Repo("src".into())
        );
    }

    #[test]
    fn flatfs_encode_option_turns_on_the_key_encoding() {
        let dir = tempfile::tempdir().unwrap();
        let plain = format!("flatfs:{}", dir.path().join("plain").display());
        let spec = StoreSpec::parse(&plain).unwrap();
        assert!(!spec.encode);
        let store = open(&spec, creating()).unwrap().store;
        let err = store.put(&"/notes.txt".into(), b"x").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidKey);
        assert!(err.to_string().contains("encode=true"), "{err}");
        store.close().unwrap();

        let encoded = format!("flatfs:{}?encode=true", dir.path().join("enc").display());
        let spec = StoreSpec::parse(&encoded).unwrap();
        assert!(spec.encode);
        let store = open(&spec, creating()).unwrap().store;
        store.put(&"/notes.txt".into(), b"x").unwrap();
        assert_eq!(store.get(&"/notes.txt".into()).unwrap(), b"x");
        store.close().unwrap();
    }

    #[test]
    fn a_new_directory_becomes_a_repository_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let repo_dir = dir.path().join("repo");
        let spec = StoreSpec::parse(repo_dir.to_str().unwrap()).unwrap();
        {
            let opened = open(&spec, creating()).unwrap();
            opened.store.put(&"/a/b".into(), b"v").unwrap();
            opened.store.close().unwrap();
        }
        assert!(repo_dir.join(REPO_FILE).exists());
        // An existing repository opens without `create`, and `create` opens it too.
        for mode in [OpenMode::default(), creating()] {
            let opened = open(&spec, mode).unwrap();
            assert_eq!(opened.store.get(&"/a/b".into()).unwrap(), b"v");
            assert!(opened.reconciled.is_none());
            opened.store.close().unwrap();
        }
    }

    fn creating() -> OpenMode {
        OpenMode {
            create: true,
            ..OpenMode::default()
        }
    }

    /// Every path under `dir`, sorted.
    fn tree(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut todo = vec![dir.to_path_buf()];
        while let Some(d) = todo.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    todo.push(p.clone());
                }
                out.push(p);
            }
        }
        out.sort();
        out
    }

    #[test]
    fn create_makes_the_missing_parents_of_every_store_as_of_a_repository() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let specs = [
            format!("{d}/r/s/repo"),
            format!("flatfs:{d}/f/g/blocks"),
            format!("redb:{d}/h/i/v.redb"),
            format!("redb:{d}/j/v.redb?index={d}/k/l/v.index"),
            format!("mount:/b=flatfs:{d}/m/blocks;/=redb:{d}/n/v.redb;index={d}/o/i.redb"),
        ];
        for text in &specs {
            let spec = StoreSpec::parse(text).unwrap();
            // Without create nothing is made, parents included.
            let before = std::fs::read_dir(dir.path()).unwrap().count();
            assert!(open(&spec, OpenMode::default()).is_err(), "{text}");
            assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), before);
            let opened = open(&spec, creating()).unwrap_or_else(|e| panic!("{text}: {e}"));
            let key: Key = "/K".into();
            opened.store.put(&key, b"v").unwrap();
            opened.store.close().unwrap();
            drop(opened);
            let opened = open(&spec, OpenMode::default()).unwrap();
            assert_eq!(opened.store.get(&key).unwrap(), b"v", "{text}");
        }
    }

    /// An error while making the directories above a new store says what it was doing, to
    /// which directory and for which path, and names no store type (it named flatfs, whose
    /// `fsync_dir` it borrowed, for every kind of store).
    #[test]
    fn an_error_making_the_parents_of_a_new_store_names_the_step_and_no_store_type() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        for text in [
            format!("{d}/a/b/repo"),
            format!("redb:{d}/a/b/v.redb"),
            format!("flatfs:{d}/a/b/blocks"),
        ] {
            let spec = StoreSpec::parse(&text).unwrap();
            // Syncing `a` after making `a/b` in it fails.
            crate::sys::FAIL_SYNC_OF.with(|f| *f.borrow_mut() = Some(dir.path().join("a")));
            let err = open(&spec, creating()).err();
            crate::sys::FAIL_SYNC_OF.with(|f| *f.borrow_mut() = None);
            let err = err.unwrap_or_else(|| panic!("{text} opened")).to_string();
            assert!(
                err.contains(&format!(
                    "syncing directory {d}/a after creating {d}/a/b in it"
                )),
                "{err}"
            );
            assert!(!err.contains("flatfs"), "{err}");
            std::fs::remove_dir_all(dir.path().join("a")).unwrap();
        }
    }

    /// What `Creation::undo` takes back: the new store and the directories made above it,
    /// but not a directory that existed before nor one that holds what another process put
    /// there meanwhile. (Before, it removed the highest new directory with all it held, and
    /// said only that path.)
    #[test]
    fn undoing_a_creation_removes_the_directories_made_for_it_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("old")).unwrap();
        let o = d.join("old").display().to_string();
        let undo = |text: &str, meanwhile: &dyn Fn()| {
            let spec = StoreSpec::parse(text).unwrap();
            let creation = Creation::before(&spec).unwrap();
            assert!(!creation.is_empty(), "{text}");
            let opened = open(&spec, creating()).unwrap_or_else(|e| panic!("{text}: {e}"));
            opened.store.close().unwrap();
            drop(opened);
            meanwhile();
            let inventory = creation.inventory();
            creation
                .undo(&inventory)
                .unwrap_or_else(|e| panic!("{text}: {e}"))
        };
        for text in [
            format!("{o}/a/b/repo"),
            format!("flatfs:{o}/a/b/blocks"),
            format!("redb:{o}/a/v.redb?index={o}/a/b/c/v.index"),
        ] {
            let said = undo(&text, &|| {});
            assert!(said.contains("made for it"), "{text}: {said}");
            assert!(said.contains(&format!("{o}/a")), "{text}: {said}");
            let left: Vec<_> = std::fs::read_dir(d.join("old")).unwrap().collect();
            assert!(left.is_empty(), "{text}: {left:?}");
        }
        // Another process puts a file in a directory the open made: it stays, with the
        // directories above it; the store and the directory below go.
        let text = format!("{o}/a/b/repo");
        let said = undo(&text, &|| {
            std::fs::write(d.join("old/a/theirs"), b"x").unwrap();
        });
        assert!(d.join("old/a/theirs").exists(), "{said}");
        assert!(!d.join("old/a/b").exists(), "{said}");
        assert!(said.contains("hold something else"), "{said}");
    }

    #[test]
    fn a_missing_or_empty_store_path_is_refused_and_nothing_is_created() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("empty")).unwrap();
        std::fs::create_dir(d.join("empty-flat")).unwrap();
        std::fs::File::create(d.join("empty.redb")).unwrap();
        // A flatfs directory that exists, so that only the other mount child is missing.
        let blocks = d.join("blocks");
        let flat = StoreSpec::parse(&format!("flatfs:{}", blocks.display())).unwrap();
        open(&flat, creating()).unwrap().store.close().unwrap();
        std::fs::write(
            d.join("tree.json"),
            br#"{"type":"mount","mounts":[{"mountpoint":"/x","type":"flatfs","path":"typo-flat"}]}"#,
        )
        .unwrap();
        std::fs::create_dir(d.join("kubo")).unwrap();
        std::fs::write(
            d.join("kubo/datastore_spec"),
            br#"{"mounts":[{"mountpoint":"/blocks","path":"blocks","shardFunc":"/repo/flatfs/shard/v1/next-to-last/2","type":"flatfs"}],"type":"mount"}"#,
        )
        .unwrap();
        // A repository whose dsfs.json names a tiered store that is not there.
        std::fs::create_dir(d.join("half")).unwrap();
        std::fs::write(
            d.join("half").join(REPO_FILE),
            br#"{"dsfs_repo":1,"index":"index.redb","datastore":{"type":"tiered","path":"data"}}"#,
        )
        .unwrap();
        let cases = [
            (
                format!("{}", d.join("typo").display()),
                "typo does not exist",
            ),
            (
                format!("dir:{}", d.join("typo2").display()),
                "typo2 does not exist",
            ),
            (
                format!("{}", d.join("empty").display()),
                "empty is an empty directory",
            ),
            (
                format!("flatfs:{}", d.join("typo3").display()),
                "typo3 does not exist",
            ),
            (
                format!("flatfs:{}", d.join("empty-flat").display()),
                "empty-flat is an empty directory",
            ),
            (
                format!("redb:{}", d.join("typo.redb").display()),
                "typo.redb does not exist",
            ),
            (
                format!("redb:{}", d.join("empty.redb").display()),
                "empty.redb is an empty file",
            ),
            (
                format!(
                    "mount:/blocks=flatfs:{};/=redb:{};index={}",
                    blocks.display(),
                    d.join("v.redb").display(),
                    d.join("i.redb").display()
                ),
                "v.redb does not exist",
            ),
            (
                format!("json:{}", d.join("tree.json").display()),
                "typo-flat does not exist",
            ),
            (
                format!("kubo:{}", d.join("kubo").display()),
                "blocks does not exist",
            ),
            (
                format!("{}", d.join("half").display()),
                "data does not exist",
            ),
        ];
        let before = tree(d);
        for (text, what) in &cases {
            let spec = StoreSpec::parse(text).unwrap();
            let err = open(&spec, OpenMode::default()).err().expect(text);
            assert_eq!(err.kind(), ErrorKind::NotFound, "{text}: {err}");
            let msg = err.to_string();
            assert!(
                msg.contains(what) && msg.contains("--create"),
                "{text}: {msg}"
            );
            assert_eq!(tree(d), before, "{text} created something");
        }
        // With `create`, each is created, and then opens without it.
        for (text, _) in &cases {
            let spec = StoreSpec::parse(text).unwrap();
            open(&spec, creating()).unwrap().store.close().unwrap();
            assert!(absent_paths(&spec).unwrap().is_empty(), "{text}");
            open(&spec, OpenMode::default())
                .unwrap()
                .store
                .close()
                .unwrap();
        }
    }

    /// A new repository's directories are made one after another (blocks/, then data/ for the
    /// tiered store, then data/files/); each one's entry must be synced in its parent. The
    /// repository directory was synced once, when blocks/ was made, before data/ existed: a
    /// power loss could drop data/ with every value in it.
    #[test]
    fn a_new_repositorys_directories_are_synced_into_their_parents() {
        let dir = tempfile::tempdir().unwrap();
        let repo_dir = dir.path().join("repo");
        let spec = StoreSpec::parse(repo_dir.to_str().unwrap()).unwrap();
        crate::backend::flatfs::SYNCED_DIRS.with(|d| d.borrow_mut().clear());
        let opened = open(&spec, creating()).unwrap();
        let synced = crate::backend::flatfs::SYNCED_DIRS.with(|d| d.borrow().clone());
        let data = repo_dir.join("data");
        assert!(data.is_dir());
        // blocks/ in the repository, then data/ in the repository, then files/ in data/.
        let repo_syncs = synced.iter().filter(|p| **p == repo_dir).count();
        assert!(
            repo_syncs >= 2,
            "data/ was never synced into {repo_dir:?}: {synced:?}"
        );
        assert!(synced.contains(&data), "{synced:?}");
        opened.store.close().unwrap();
    }

    /// A repository's index is built from its segments (the shard directories of blocks/);
    /// the keys of its tiered store are in no segment, and a new index left them all out:
    /// after index.redb was lost, only the blocks were listed.
    #[test]
    fn a_repositorys_new_index_lists_the_keys_outside_blocks_too() {
        let dir = tempfile::tempdir().unwrap();
        let spec = StoreSpec::parse(dir.path().join("r").to_str().unwrap()).unwrap();
        let block = crate::cid::block_key(&crate::cid::sha256_multihash(b"b"));
        {
            let opened = open(&spec, creating()).unwrap();
            opened.store.put(&block, b"b").unwrap();
            opened.store.put(&"/home/small".into(), b"small").unwrap();
            opened
                .store
                .put(&"/home/large".into(), &vec![7u8; 100_000])
                .unwrap();
            opened.store.close().unwrap();
        }
        std::fs::remove_file(dir.path().join("r/index.redb")).unwrap();
        let opened = open(&spec, OpenMode::default()).unwrap();
        let index = opened.store.index();
        for key in [block.clone(), "/home/small".into(), "/home/large".into()] {
            assert!(index.resolve(&key).unwrap().is_some(), "{key} not indexed");
        }
        assert_eq!(index.key_count().unwrap(), 3);
        opened.store.close().unwrap();
    }

    #[test]
    fn the_default_layout_keeps_blocks_in_kubos_flatfs_format() {
        let dir = tempfile::tempdir().unwrap();
        let spec = StoreSpec::parse(dir.path().join("r").to_str().unwrap()).unwrap();
        {
            let opened = open(&spec, creating()).unwrap();
            let block =
                crate::cid::block_key(&crate::cid::sha256_multihash(&[0x0a, 0x02, 0x08, 0x01]));
            opened.store.put(&block, &[0x0a, 0x02, 0x08, 0x01]).unwrap();
            opened
                .store
                .put(&"/home/notes.txt".into(), b"small")
                .unwrap();
            opened
                .store
                .put(&"/home/video".into(), &vec![0u8; 100_000])
                .unwrap();
            opened.store.close().unwrap();
        }
        let root = dir.path().join("r");
        assert_eq!(
            std::fs::read_to_string(root.join("blocks/SHARDING")).unwrap(),
            "/repo/flatfs/shard/v1/next-to-last/2\n"
        );
        assert!(
            root.join("blocks/X3/CIQFTFEEHEDF6KLBT32BFAGLXEZL4UWFNWM4LFTLMXQBCERZ6CMLX3Y.data")
                .exists()
        );
        assert!(root.join("data/records.redb").exists());
        let opened = open(&spec, creating()).unwrap();
        assert!(
            opened
                .store
                .backing_file(&"/home/video".into())
                .unwrap()
                .is_some()
        );
        assert!(
            opened
                .store
                .backing_file(&"/home/notes.txt".into())
                .unwrap()
                .is_none()
        );
        assert_eq!(
            opened.store.get(&"/home/notes.txt".into()).unwrap(),
            b"small"
        );
    }

    #[test]
    fn flatfs_specs_open_upstream_directories_and_keep_names() {
        let dir = tempfile::tempdir().unwrap();
        let blocks = dir.path().join("blocks");
        let spec =
            StoreSpec::parse(&format!("flatfs:{}?shard=next-to-last/2", blocks.display())).unwrap();
        let opened = open(&spec, creating()).unwrap();
        opened.store.put(&"/CIQABC".into(), b"v").unwrap();
        assert!(opened.store.put(&"/lower/case".into(), b"v").is_err());
        opened.store.close().unwrap();
        assert!(blocks.join(FLATFS_INDEX).exists());
        assert!(blocks.join("AB/CIQABC.data").exists());
        assert!(StoreSpec::parse("flatfs:/x?shard=sideways/2").is_err());
    }

    #[test]
    fn kubo_specs_open_what_dsfs_supports_and_name_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let kubo = dir.path();
        let default = r#"{"mounts":[{"mountpoint":"/blocks","path":"blocks","shardFunc":"/repo/flatfs/shard/v1/next-to-last/2","type":"flatfs"},{"mountpoint":"/","path":"datastore","type":"levelds"}],"type":"mount"}"#;
        std::fs::write(kubo.join("datastore_spec"), default).unwrap();
        let spec = StoreSpec::parse(&format!("kubo:{}", kubo.display())).unwrap();
        let err = open(&spec, creating()).err().unwrap();
        assert_eq!(err.kind(), ErrorKind::Unsupported);
        assert!(err.to_string().contains("levelds"), "{err}");
        let measured = r#"{"type":"mount","mounts":[{"mountpoint":"/blocks","type":"measure","prefix":"flatfs.datastore","child":{"type":"flatfs","path":"blocks","shardFunc":"/repo/flatfs/shard/v1/next-to-last/2","sync":false}}]}"#;
        std::fs::write(kubo.join("datastore_spec"), measured).unwrap();
        let opened = open(&spec, creating()).unwrap();
        opened.store.put(&"/blocks/CIQXYZ".into(), b"b").unwrap();
        opened.store.close().unwrap();
        assert!(kubo.join("blocks/XY/CIQXYZ.data").exists());
    }

    #[test]
    fn mount_and_json_specs_compose_stores() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let text = format!(
            "mount:/blocks=flatfs:{d}/blocks?shard=next-to-last/2;/=redb:{d}/v.redb;index={d}/i.redb"
        );
        let spec = StoreSpec::parse(&text).unwrap();
        {
            let opened = open(&spec, creating()).unwrap();
            opened.store.put(&"/blocks/CIQAAA".into(), b"b").unwrap();
            opened.store.put(&"/pins/x".into(), b"p").unwrap();
            opened.store.close().unwrap();
        }
        assert!(dir.path().join("blocks/AA/CIQAAA.data").exists());
        assert!(dir.path().join("i.redb").exists());
        for bad in [
            "mount:",
            "mount:/a=dir:/x",
            "mount:a=mem:",
            "mount:/a=redb:/x",
            "mount:/a",
        ] {
            assert!(StoreSpec::parse(bad).is_err(), "{bad}");
        }
        assert!(StoreSpec::parse("mount:/=mem:;/b=mem:").is_ok());
        let json = dir.path().join("layout.json");
        std::fs::write(
            &json,
            r#"{"type":"mount","mounts":[{"mountpoint":"/","type":"redb","path":"j.redb"}]}"#,
        )
        .unwrap();
        let spec = StoreSpec::parse(&format!("json:{}", json.display())).unwrap();
        let opened = open(&spec, creating()).unwrap();
        opened.store.put(&"/k".into(), b"v").unwrap();
        assert!(dir.path().join("j.redb").exists());
    }

    #[test]
    fn a_foreign_non_empty_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("precious.txt"), b"x").unwrap();
        let spec = StoreSpec::parse(dir.path().to_str().unwrap()).unwrap();
        let err = open(&spec, creating()).err().unwrap();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        assert!(err.to_string().contains("not a dsfs repository"), "{err}");
    }

    #[test]
    fn json_spec_paths_cannot_leave_the_directory_of_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("spec.json");
        for bad in ["../../../x", "/etc/x", "a/../../x"] {
            let tree = json!({"type": "mount", "mounts": [
                {"mountpoint": "/", "type": "flatfs", "path": bad,
                 "shardFunc": "/repo/flatfs/shard/v1/next-to-last/2"}]});
            std::fs::write(&file, tree.to_string()).unwrap();
            let spec = StoreSpec::parse(&format!("json:{}", file.display())).unwrap();
            let err = open(&spec, creating()).err().expect(bad);
            assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{bad}: {err}");
        }
    }

    #[test]
    fn repository_paths_cannot_escape_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["../x.redb", "/etc/x.redb", ""] {
            let cfg = json!({"dsfs_repo": 1, "index": "index.redb",
                             "datastore": {"type": "redb", "path": bad}});
            std::fs::write(dir.path().join(REPO_FILE), cfg.to_string()).unwrap();
            let spec = StoreSpec::parse(dir.path().to_str().unwrap()).unwrap();
            assert!(open(&spec, creating()).is_err(), "{bad}");
        }
        let cfg = json!({"dsfs_repo": 1, "index": "../i", "datastore": {"type": "mem"}});
        std::fs::write(dir.path().join(REPO_FILE), cfg.to_string()).unwrap();
        let spec = StoreSpec::parse(dir.path().to_str().unwrap()).unwrap();
        assert!(open(&spec, creating()).is_err());
    }
    /// Opens `spec` on another thread: `None` if that takes longer than a minute (a hang).
    fn open_within(spec: StoreSpec) -> Option<Result<()>> {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(open(&spec, creating()).map(|_| ()));
        });
        rx.recv_timeout(std::time::Duration::from_secs(60)).ok()
    }

    #[test]
    fn a_fifo_as_a_kubo_datastore_spec_is_an_error_not_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        crate::sys::mkfifo(&dir.path().join("datastore_spec"));
        let spec = StoreSpec::parse(&format!("kubo:{}", dir.path().display())).unwrap();
        let err = open_within(spec).expect("open hung").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
    }

    #[test]
    fn a_fifo_as_a_json_spec_file_is_an_error_not_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("spec.json");
        crate::sys::mkfifo(&file);
        let spec = StoreSpec::parse(&format!("json:{}", file.display())).unwrap();
        let err = open_within(spec).expect("open hung").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
    }

    #[test]
    fn a_fifo_as_a_repositorys_dsfs_json_is_an_error_not_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        crate::sys::mkfifo(&dir.path().join(REPO_FILE));
        let spec = StoreSpec::parse(dir.path().to_str().unwrap()).unwrap();
        let err = open_within(spec).expect("open hung").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
    }
}
