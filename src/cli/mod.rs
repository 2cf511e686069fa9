//! The `dsfs` command line.

mod control;
pub mod mount;

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

use crate::datastore::{Datastore, Error, ErrorKind, Key, Order, Query, StageInit};
use crate::index::reconcile;
use crate::index::salvage::Salvaged;
use crate::index::{IndexedStore, NodeKind};
use crate::spec::{self, OpenMode, StoreSpec};

/// Values at least this large are streamed through a staging file instead of memory.
const STREAM_THRESHOLD: u64 = 16 << 20;
/// The read size used when copying values out.
const COPY_CHUNK: usize = 1 << 20;

const AFTER_HELP: &str = "\
STORE SPECS (--store, or the DSFS_STORE environment variable):
  DIR, dir:DIR      a dsfs repository directory ('dsfs init', or --create on
                    mount, put, put-block, add and import, creates it when
                    missing or empty; without them a missing path is refused;
                    a bare word is a path, unless it is a store type such as
                    flatfs or mem, which needs its colon)
  mem:              a volatile in-memory store (gone when the command ends)
  redb:PATH         values in one redb file; the index beside it in PATH.index
  flatfs:PATH       a go-ds-flatfs directory (a Kubo repo's blocks/; created
                    only by init or --create, as are redb: files; every store
                    is created with its missing parent directories)
  kubo:IPFS_PATH    the layout of a Kubo repo's datastore_spec
  json:FILE         a Kubo-style JSON datastore tree (paths relative to FILE)
  rados:POOL        a Ceph RADOS pool (dsfs built with --features rados)
  spdk:aio=IMAGE    an SPDK blobstore in BlobFS's layout on an image file
                    (--features spdk and an installed SPDK); spdk:fake=IMAGE is
                    dsfs's in-process blobstore (no SPDK needed)
  motr:INDEX_FID    a CORTX Motr index (--features motr and a built Motr);
                    motr:INDEX_FID?fake=PATH is dsfs's in-process Motr
  mount:/blocks=flatfs:D/blocks;/=redb:D/v.redb;index=D/index.redb
                    mem:, redb: and flatfs: stores mounted by key prefix

  Options follow a '?', joined by '&':
    index=PATH      keep the index there          (every store; the file must
                    exist unless 'reindex' or --create builds it; rados:
                    and motr: build their local index when missing)
    durable=true    fsync every redb write        (redb:, repositories)
    shard=next-to-last/2   shard function of a new directory   (flatfs:)
    sync=true       fsync every put               (flatfs:)
    encode=true     store keys outside flatfs's alphabet (A-Z 0-9 + - _ =) under
                    reversible encoded names      (flatfs:)
    conf=PATH id=NAME prefix=NS timeout=SECS   ceph.conf, cephx user,
                    RADOS namespace, bound on every operation   (rados:)
    cluster=BYTES io_unit=BYTES size=BYTES mem=MIB   blobstore cluster and
                    io unit size, image size, SPDK memory   (spdk:)
    ha=EP local=EP profile=FID process=FID compat=go-ds-motr inline=BYTES
    timeout=SECS    Motr endpoints and fids, go-ds-motr records   (motr:)
  e.g. flatfs:/srv/blocks?shard=next-to-last/2&encode=true
       rados:dsfs?conf=/etc/ceph/ceph.conf&id=dsfs&index=/var/lib/dsfs/index.redb

  Without --store, the repository in $XDG_DATA_HOME/dsfs (~/.local/share/dsfs)
  is used.

KEYS are go-datastore keys: '/'-separated, cleaned like paths ('a//b/' is '/a/b').

Logging: RUST_LOG=info (or debug) prints what dsfs does to stderr.";

/// dsfs: an IPFS-style key-value datastore you can also mount as a filesystem.
#[derive(Parser, Debug)]
#[command(name = "dsfs", version, about, after_help = AFTER_HELP)]
pub struct Cli {
    /// The datastore to use (see STORE SPECS in 'dsfs --help'; not used by mount and umount).
    #[arg(short, long, global = true, env = "DSFS_STORE", value_name = "SPEC")]
    store: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create the store (a repository, or the flatfs or redb store a spec names) where it does
    /// not exist yet, and print its layout. Other commands create a store only with --create.
    Init,
    /// Store a value: the contents of FILE, or standard input when FILE is '-' or missing.
    Put {
        /// The key to store under.
        key: String,
        /// Where to read the value from.
        file: Option<PathBuf>,
        /// Create the store if the spec names a missing path or an empty directory (without
        /// it such a store is refused, so a mistyped path creates nothing).
        #[arg(long)]
        create: bool,
    },
    /// Store a file as an IPFS raw block under /blocks/<multihash> and print its CID.
    PutBlock {
        /// The block's bytes ('-' or missing: standard input).
        file: Option<PathBuf>,
        /// Create the store if the spec names a missing path or an empty directory (without
        /// it such a store is refused, so a mistyped path creates nothing).
        #[arg(long)]
        create: bool,
    },
    /// Write a value to standard output (or to a file with -o).
    Get {
        /// The key to read, or a CID with --cid.
        key: String,
        /// Write the value to this file instead of standard output.
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// KEY is a CID: read the block Kubo would store for it.
        #[arg(long)]
        cid: bool,
    },
    /// List keys under a prefix (strict children, as go-datastore queries do).
    #[command(visible_alias = "query")]
    Ls {
        /// The prefix; '/' (the default) lists every key.
        #[arg(default_value = "/")]
        prefix: String,
        /// Print each key's size before it.
        #[arg(short, long)]
        long: bool,
        /// Print each value after its key (as UTF-8, lossily); implies reading values.
        #[arg(long, conflicts_with = "keys_only")]
        values: bool,
        /// Do not read values (the default unless --values or a value order is used).
        #[arg(long)]
        keys_only: bool,
        /// At most this many results (0: no limit).
        #[arg(long, default_value_t = 0)]
        limit: usize,
        /// Skip this many results first.
        #[arg(long, default_value_t = 0)]
        offset: usize,
        /// Result order.
        #[arg(long, value_enum)]
        order: Option<OrderArg>,
        /// End each line with a NUL byte and print keys raw (for `xargs -0`). Without it,
        /// backslashes and control characters in keys are printed as C escapes (`\\`, `\n`,
        /// `\t`, `\x1b`), so every key is one unambiguous line.
        #[arg(short = '0', long)]
        null: bool,
    },
    /// Delete keys. Deleting a key that holds nothing succeeds.
    Rm {
        /// The keys to delete.
        #[arg(required = true)]
        keys: Vec<String>,
        /// Also delete every key below each KEY.
        #[arg(short, long)]
        recursive: bool,
        /// Let -r take the root ('/', also written '' or '//'): delete every key in the store.
        #[arg(long)]
        no_preserve_root: bool,
    },
    /// Show what the index records about a key.
    Stat {
        /// The key.
        key: String,
    },
    /// Print the CID `ipfs add` gives a value (or a local file): the same as the
    /// user.ipfs.cid attribute of the file in a mount. --raw: the CIDv1 of the whole value
    /// as one raw block.
    Cid {
        /// The key, or a local file's path when no such key exists.
        key: String,
        /// The CIDv1 (raw, sha2-256) of the whole value, as one block.
        #[arg(long)]
        raw: bool,
    },
    /// Add a file (or a tree with -r) as `ipfs add` does: a UnixFS DAG whose blocks go under
    /// /blocks in Kubo's layout; prints each CID, which equals the one Kubo prints for the
    /// same bytes and options.
    Add {
        /// The file or directory.
        path: PathBuf,
        /// Add a directory and everything in it.
        #[arg(short, long)]
        recursive: bool,
        /// Include files whose names start with '.' (left out by default, as by Kubo).
        #[arg(short = 'H', long)]
        hidden: bool,
        /// CID version: 0 (Kubo's default) or 1.
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=1))]
        cid_version: u8,
        /// Leaves as raw blocks (default: true with --cid-version 1, as in Kubo).
        #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
        raw_leaves: Option<bool>,
        /// Chunker: size-N, fixed chunks of N bytes.
        #[arg(long, default_value = "size-262144")]
        chunker: String,
        /// Compute the CIDs only; store nothing.
        #[arg(short = 'n', long)]
        only_hash: bool,
        /// Print only the CIDs.
        #[arg(short, long)]
        quiet: bool,
        /// Print only the last (root) CID.
        #[arg(short = 'Q', long)]
        quieter: bool,
        /// Create the store if the spec names a missing path or an empty directory (without
        /// it such a store is refused, so a mistyped path creates nothing).
        #[arg(long)]
        create: bool,
    },
    /// Write the UnixFS file CID names (as 'ipfs cat' would) from the blocks in /blocks,
    /// checking every block against its hash.
    Cat {
        /// The file's CID (v0 or v1, any multibase), or CID/path/in/it for a file inside a
        /// directory's DAG.
        cid: String,
    },
    /// Copy a directory tree into the store: each file becomes a key under PREFIX.
    Import {
        /// The directory (or single file) to copy.
        source: PathBuf,
        /// The key prefix to put the files under.
        #[arg(long, default_value = "/")]
        prefix: String,
        /// How many files to commit per batch.
        #[arg(long, default_value_t = 256)]
        batch: usize,
        /// Create the store if the spec names a missing path or an empty directory (without
        /// it such a store is refused, so a mistyped path creates nothing).
        #[arg(long)]
        create: bool,
    },
    /// Check the store and the index; exit status 0 when everything is (or, with --repair,
    /// has been made) consistent, 1 when a problem remains.
    Fsck {
        /// Repair what can be repaired: remove debris, turn values that are lost (a missing or
        /// damaged file) into missing keys, and make the index match the store.
        #[arg(long)]
        repair: bool,
        /// Also read every file-backed value and compare it with the hash recorded when it
        /// was written (finds truncated or altered files; reads all the data).
        #[arg(long)]
        verify: bool,
        /// With --repair, for a repository whose dsfs.json names a store directory that is
        /// missing (a deleted blocks/, or one on a disk that is not mounted): accept that the
        /// keys stored there are gone, make an empty store there and remove those keys from
        /// the index (their number is reported). Without it such a repository is refused.
        #[arg(long, requires = "repair")]
        drop_missing: bool,
    },
    /// Rebuild the index from the store's keys (loses directories, modes and xattrs).
    Reindex,
    /// Mount a store as a filesystem. Returns once the mount is live; the daemon serves it
    /// until 'dsfs umount' (or SIGTERM/SIGINT), committing every pending write before it exits.
    #[command(after_help = MOUNT_HELP)]
    Mount {
        /// The store (a repository directory or a spec; see 'dsfs --help').
        spec: String,
        /// An existing, empty directory to mount on (see -o nonempty).
        mountpoint: PathBuf,
        /// Mount options, comma-separated (see below); may be repeated.
        #[arg(short = 'o', value_name = "OPTIONS")]
        options: Vec<String>,
        /// Stay in the foreground and log to standard error.
        #[arg(short, long)]
        foreground: bool,
        /// Append the daemon's log to this file.
        #[arg(long, value_name = "FILE")]
        log: Option<PathBuf>,
        /// Create the store if SPEC names a missing path or an empty directory (also -o
        /// create); an existing store is opened as usual. Without it such a SPEC is refused.
        #[arg(long)]
        create: bool,
    },
    /// Unmount a dsfs mount and wait until every pending write is committed.
    Umount {
        /// The mount point.
        mountpoint: PathBuf,
        /// Detach now even if busy (lazy unmount).
        #[arg(short = 'l', long)]
        lazy: bool,
    },
}

const MOUNT_HELP: &str = "\
CREATING A STORE:
  SPEC must name an existing store. A path that does not exist, an empty
  directory (or an empty redb file) is refused, so a mistyped path never
  becomes a new, empty store: pass --create (or -o create, e.g. in fstab) to
  create the store there. An empty directory counts as missing because mount
  points are empty directories too: swapped arguments, or a mount point given
  as SPEC, must not turn into a repository. With --create an existing store
  is simply opened.

MOUNT OPTIONS (-o a,b,c):
  create                create the store if it is missing (as --create)
  ro                    read-only
  allow_other           let every user in (non-root needs user_allow_other in
                        /etc/fuse.conf; without it the mount is refused)
  allow_root            let root in as well as you
  default_permissions   the kernel checks modes and owners (the default;
                        no_default_permissions turns it off)
  uid=N, gid=N          report every file as owned by N
  umask=OOO             clear these bits from every reported mode
  threads=N             FUSE worker threads (default: cores, 4 to 8)
  passthrough=on|off    let the kernel read file-backed values directly (default on)
  ipfs_blocks=on|off    also write each committed file's UnixFS blocks under /blocks (default off)
  writeback_cache=on|off  kernel write caching, when passthrough is off (default off)
  revalidate=SECONDS    how soon changes other programs (or hosts) make to a flatfs or
                        rados store show
                        (default 2; 0 never looks; stores only dsfs writes never need it)
  nonempty              mount over a directory that has entries (they are hidden
                        while mounted; without it such a mount point is refused)
  noxattr               no extended attributes at all (default: user.*, trusted.*
                        and security.* xattrs and user.ipfs.cid are served; POSIX
                        ACLs and SELinux labels are not supported, EOPNOTSUPP)
  nosuid, nodev, noexec, noatime, sync, dirsync: passed to the kernel
  noauto, user, _netdev, nofail, defaults, x-*: accepted for fstab and ignored

Logging: RUST_LOG=info with -f, or --log FILE for the daemon.";

#[derive(Clone, Copy, Debug, ValueEnum)]
enum OrderArg {
    /// Ascending key.
    Key,
    /// Descending key.
    KeyDesc,
    /// Ascending value.
    Value,
    /// Descending value.
    ValueDesc,
}

/// Parses the command line, runs it and returns the exit status. Errors are printed as one line.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dsfs: {e}");
            ExitCode::FAILURE
        }
    }
}

fn is_broken_pipe(e: &Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<io::Error>()
            && io.kind() == io::ErrorKind::BrokenPipe
        {
            return true;
        }
        source = s.source();
    }
    false
}

/// The repository used when no store is named.
pub fn default_store() -> String {
    let base = std::env::var_os("XDG_DATA_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("dsfs").to_string_lossy().into_owned()
}

fn out_err(e: io::Error) -> Error {
    Error::io("writing output", e)
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<ExitCode, Error> {
    match &cli.command {
        Command::Mount {
            spec,
            mountpoint,
            options,
            foreground,
            log,
            create,
        } => {
            return mount::mount(
                spec,
                mountpoint,
                options,
                *foreground,
                log.as_deref(),
                *create,
            );
        }
        Command::Umount { mountpoint, lazy } => return mount::umount(mountpoint, *lazy),
        _ => {}
    }
    let spec_text = cli.store.clone().unwrap_or_else(default_store);
    let mut spec = StoreSpec::parse(&spec_text)?;
    // fsck and reindex read every page of the redb files as they open them, so that damage is
    // found (and the damaged file salvaged) before they trust what they read.
    spec.check_integrity = matches!(cli.command, Command::Fsck { .. } | Command::Reindex);
    let mode = OpenMode {
        no_reconcile: matches!(cli.command, Command::Fsck { .. } | Command::Reindex),
        progress: true,
        create: creates(&cli.command),
        // `reindex` builds the index from the store: a missing index= file is what it makes.
        rebuild_index: matches!(cli.command, Command::Reindex),
        drop_missing: matches!(
            cli.command,
            Command::Fsck {
                drop_missing: true,
                ..
            }
        ),
    };
    if !mode.create && needs_no_store(&cli.command) && !spec::absent_paths(&spec)?.is_empty() {
        // Nothing to read from a store that does not exist: `cid FILE` and `add -n` work on
        // local files alone, without creating it.
        spec = StoreSpec::parse("mem:")?;
    }
    let opened = match spec::open(&spec, mode) {
        Ok(opened) => opened,
        Err(e) if e.kind() == ErrorKind::Locked => {
            // Mounted: the daemon runs the command on the store it has open.
            let Some(home) = spec.home() else {
                return Err(e);
            };
            if let Some(code) = control::forward(&home, &cli.command)? {
                return Ok(code);
            }
            return Err(Error::new(
                ErrorKind::Locked,
                format!(
                    "{} is in use by another process and no dsfs daemon answers for it \
                     (another dsfs command still running?): {e}",
                    home.display()
                ),
            ));
        }
        Err(e) => return Err(e),
    };
    if let Some(report) = &opened.reconciled
        && !report.is_consistent()
    {
        eprintln!(
            "dsfs: the index was not closed cleanly and has been repaired: {}",
            report.summary()
        );
    }
    let store = opened.store.clone();
    let stdout = io::stdout();
    let mut out = stdout.lock();
    let mut err = io::stderr();
    let stdin = io::stdin();
    let mut input = stdin.lock();
    let io = CmdIo {
        out: &mut out,
        err: &mut err,
        input: &mut input,
        cwd: None,
        live: None,
    };
    let result = execute(&cli.command, &store, &opened.description, Some(&opened), io);
    let closed = store.close();
    let code = result?;
    closed?;
    Ok(code)
}

/// Whether `command` creates its store where it is missing: `init` always, the commands that
/// store data with --create. Reading commands never do.
fn creates(command: &Command) -> bool {
    match command {
        Command::Init => true,
        Command::Put { create, .. }
        | Command::PutBlock { create, .. }
        | Command::Add { create, .. }
        | Command::Import { create, .. }
        | Command::Mount { create, .. } => *create,
        Command::Get { .. }
        | Command::Ls { .. }
        | Command::Rm { .. }
        | Command::Stat { .. }
        | Command::Cid { .. }
        | Command::Cat { .. }
        | Command::Fsck { .. }
        | Command::Reindex
        | Command::Umount { .. } => false,
    }
}

/// Whether `command` can run without its store when the store does not exist: `cid` (a key
/// cannot be in a store that does not exist, so it hashes the local file) and `add -n`.
fn needs_no_store(command: &Command) -> bool {
    matches!(
        command,
        Command::Cid { .. }
            | Command::Add {
                only_hash: true,
                ..
            }
    )
}

/// Where a command reads and writes: this process's terminal, or a client of the control
/// socket ([`control`]).
struct CmdIo<'a> {
    /// Standard output.
    pub out: &'a mut dyn Write,
    /// Standard error (messages that are not errors).
    pub err: &'a mut dyn Write,
    /// Standard input.
    pub input: &'a mut dyn Read,
    /// The directory relative paths are relative to, if not this process's.
    pub cwd: Option<PathBuf>,
    /// For a command run by a mount daemon: who serves the store ("mounted at ...").
    pub live: Option<String>,
}

fn execute(
    command: &Command,
    store: &Arc<IndexedStore>,
    description: &str,
    opened: Option<&spec::Opened>,
    io: CmdIo<'_>,
) -> Result<ExitCode, Error> {
    let CmdIo {
        out: raw_out,
        err,
        input,
        cwd,
        live,
    } = io;
    let path_of = |p: &Path| match &cwd {
        Some(dir) if p.is_relative() => dir.join(p),
        _ => p.to_path_buf(),
    };
    if let Some(live) = &live
        && matches!(
            command,
            Command::Fsck { repair: true, .. } | Command::Reindex
        )
    {
        return Err(Error::new(
            ErrorKind::Locked,
            format!("the store is {live}: unmount it before repairing or rebuilding its index"),
        ));
    }
    let mut out = BufWriter::new(raw_out);
    match command {
        Command::Init => {
            writeln!(out, "{description}").map_err(out_err)?;
        }
        Command::Put { key, file, .. } => {
            let key = Key::new(key);
            let file = file.as_deref().map(path_of);
            put_from(store.as_ref(), &key, file.as_deref(), input)?;
        }
        Command::PutBlock { file, .. } => {
            let file = file.as_deref().map(path_of);
            let data = read_input(file.as_deref(), input)?;
            let hash = crate::cid::sha256_multihash(&data);
            let key = crate::cid::block_key(&hash);
            store.put(&key, &data)?;
            writeln!(out, "{}", cid::Cid::new_v1(crate::cid::RAW, hash)).map_err(out_err)?;
        }
        Command::Get { key, output, cid } => {
            let name = key;
            let key = if *cid {
                crate::cid::cid_to_key(name)?
            } else {
                Key::new(name)
            };
            // A block asked for by CID is named by that CID when it is missing.
            let named = |e: Error| match e.kind() {
                ErrorKind::NotFound if *cid => Error::new(
                    ErrorKind::NotFound,
                    format!("no block with CID {name} (it would be {key})"),
                ),
                _ => e,
            };
            // The size is asked first, so a missing value leaves no empty output file.
            let size = store
                .get_size(&key)
                .map_err(|e| named(not_found_key(&key, e)))?;
            match output {
                Some(path) => {
                    let path = path_of(path);
                    let mut f = File::create(&path)
                        .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
                    copy_out(store.as_ref(), &key, size, &mut f).map_err(named)?;
                    f.sync_all()
                        .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
                }
                None => copy_out(store.as_ref(), &key, size, &mut out).map_err(named)?,
            }
        }
        Command::Ls {
            prefix,
            long,
            values,
            keys_only,
            limit,
            offset,
            order,
            null,
        } => {
            let orders = match order {
                None => vec![],
                Some(OrderArg::Key) => vec![Order::Key],
                Some(OrderArg::KeyDesc) => vec![Order::KeyDescending],
                Some(OrderArg::Value) => vec![Order::Value],
                Some(OrderArg::ValueDesc) => vec![Order::ValueDescending],
            };
            let value_order = matches!(order, Some(OrderArg::Value | OrderArg::ValueDesc));
            let q = Query {
                prefix: prefix.clone(),
                orders,
                limit: *limit,
                offset: *offset,
                keys_only: !(*values || value_order) || *keys_only,
                returns_sizes: *long,
                ..Query::default()
            };
            for entry in store.query(q)? {
                let entry = entry?;
                if *long {
                    let size = entry
                        .size
                        .map(|s| s.to_string())
                        .unwrap_or_else(|| "-".into());
                    write!(out, "{size:>12} ").map_err(out_err)?;
                }
                if *null {
                    write!(out, "{}", entry.key).map_err(out_err)?;
                } else {
                    write!(out, "{}", escape_key(entry.key.as_str())).map_err(out_err)?;
                }
                if *values && let Some(v) = &entry.value {
                    write!(out, "\t{}", String::from_utf8_lossy(v)).map_err(out_err)?;
                }
                out.write_all(if *null { b"\0" } else { b"\n" })
                    .map_err(out_err)?;
            }
        }
        Command::Rm {
            keys,
            recursive,
            no_preserve_root,
        } => {
            // Checked before anything is deleted: `dsfs rm -r "$PREFIX"` with an empty
            // variable must not empty the store.
            if *recursive
                && !*no_preserve_root
                && let Some(root) = keys.iter().find(|k| Key::new(k.as_str()).as_str() == "/")
            {
                return Err(Error::new(
                    ErrorKind::InvalidArgument,
                    format!(
                        "refusing to delete every key: {root:?} is the root with -r \
                         (add --no-preserve-root if that is meant)"
                    ),
                ));
            }
            for key in keys {
                let key = Key::new(key);
                if *recursive {
                    let q = Query {
                        prefix: key.as_str().to_owned(),
                        keys_only: true,
                        ..Query::default()
                    };
                    let children: Vec<Key> = store
                        .query(q)?
                        .map(|r| r.map(|e| e.key))
                        .collect::<Result<_, _>>()?;
                    let mut batch = store.batch()?;
                    for child in children {
                        batch.delete(child)?;
                    }
                    batch.commit()?;
                }
                store.delete(&key)?;
            }
        }
        Command::Stat { key } => {
            let key = Key::new(key);
            let Some((id, node)) = store.index().resolve(&key)? else {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    format!("{key}: no such key"),
                ));
            };
            let kind = match node.kind {
                NodeKind::File => "file",
                NodeKind::Dir if node.value.is_some() => "directory with a value",
                NodeKind::Dir => "directory",
                NodeKind::Symlink => "symlink",
                NodeKind::Fifo => "named pipe",
                NodeKind::CharDevice => "character device",
                NodeKind::BlockDevice => "block device",
                NodeKind::Socket => "socket",
            };
            writeln!(out, "key:    {key}").map_err(out_err)?;
            writeln!(out, "kind:   {kind}").map_err(out_err)?;
            if let Some(size) = node.value {
                writeln!(out, "size:   {size}").map_err(out_err)?;
            }
            writeln!(out, "node:   {id}").map_err(out_err)?;
            writeln!(out, "mode:   {:04o}", node.mode).map_err(out_err)?;
            writeln!(out, "owner:  {}:{}", node.uid, node.gid).map_err(out_err)?;
            writeln!(out, "mtime:  {}.{:09}", node.mtime.secs, node.mtime.nanos)
                .map_err(out_err)?;
            if node.kind == NodeKind::Symlink {
                writeln!(out, "target: {}", String::from_utf8_lossy(&node.target))
                    .map_err(out_err)?;
            }
        }
        Command::Add {
            path,
            recursive,
            hidden,
            cid_version,
            raw_leaves,
            chunker,
            only_hash,
            quiet,
            quieter,
            create: _,
        } => {
            let options = crate::unixfs::ImportOptions {
                cid_version: *cid_version,
                raw_leaves: raw_leaves.unwrap_or(*cid_version == 1),
                chunk_size: parse_chunker(chunker)?,
            };
            let path = path_of(path);
            let bar = spinner_bytes("adding");
            let mut progress = |n: u64| bar.set_position(n);
            let added = if *only_hash {
                crate::unixfs::import_path(
                    &path,
                    *recursive,
                    *hidden,
                    options,
                    &mut crate::unixfs::Discard,
                    &mut progress,
                )?
            } else {
                let mut sink = BlockBatch::new(store.as_ref())?;
                let added = crate::unixfs::import_path(
                    &path,
                    *recursive,
                    *hidden,
                    options,
                    &mut sink,
                    &mut progress,
                )?;
                sink.commit()?;
                added
            };
            bar.finish_and_clear();
            let base = path.parent().unwrap_or(Path::new(""));
            let last = added.len().saturating_sub(1);
            for (i, (p, link)) in added.iter().enumerate() {
                if *quieter && i != last {
                    continue;
                }
                if *quiet || *quieter {
                    writeln!(out, "{}", link.cid).map_err(out_err)?;
                } else {
                    let name = p.strip_prefix(base).unwrap_or(p);
                    writeln!(out, "added {} {}", link.cid, name.display()).map_err(out_err)?;
                }
            }
        }
        Command::Cat { cid } => {
            let cid = cid.strip_prefix("/ipfs/").unwrap_or(cid);
            let (root, path) = cid.split_once('/').unwrap_or((cid, ""));
            let parsed = cid::Cid::try_from(root).map_err(|e| {
                Error::new(
                    ErrorKind::InvalidArgument,
                    format!("{cid:?} is not a CID: {e}"),
                )
            })?;
            crate::unixfs::resolve(store.as_ref(), &parsed, path)
                .and_then(|file| crate::unixfs::cat(store.as_ref(), &file, &mut out))
                .map_err(|e| {
                    if e.is_not_found() {
                        Error::new(
                            ErrorKind::NotFound,
                            format!("{cid}: not in this store ({e})"),
                        )
                    } else {
                        e
                    }
                })?;
        }
        Command::Cid { key, raw } => {
            let options = crate::unixfs::ImportOptions::default();
            let k = Key::new(key);
            let size = match store.get_size(&k) {
                Ok(size) => Some(size),
                Err(e) if e.is_not_found() => None,
                Err(e) => return Err(e),
            };
            let local = path_of(Path::new(key));
            let cid = match (size, raw) {
                (Some(_), true) => crate::cid::raw_cid(&store.get(&k)?),
                (Some(size), false) => {
                    crate::unixfs::import_value(
                        store.as_ref(),
                        &k,
                        size,
                        options,
                        &mut crate::unixfs::Discard,
                    )?
                    .cid
                }
                (None, _) if local.is_file() => {
                    if *raw {
                        let bytes = std::fs::read(&local)
                            .map_err(|e| Error::io(format!("reading {}", local.display()), e))?;
                        crate::cid::raw_cid(&bytes)
                    } else {
                        let added = crate::unixfs::import_path(
                            &local,
                            false,
                            false,
                            options,
                            &mut crate::unixfs::Discard,
                            &mut |_| {},
                        )?;
                        added
                            .last()
                            .map(|(_, link)| link.cid)
                            .ok_or_else(|| Error::new(ErrorKind::Io, "nothing imported"))?
                    }
                }
                (None, _) => {
                    return Err(Error::new(
                        ErrorKind::NotFound,
                        format!("{key}: no such key (nor a local file)"),
                    ));
                }
            };
            writeln!(out, "{cid}").map_err(out_err)?;
        }
        Command::Import {
            source,
            prefix,
            batch,
            create: _,
        } => {
            let (files, bytes) = import(
                store.as_ref(),
                &path_of(source),
                &Key::new(prefix),
                (*batch).max(1),
            )?;
            writeln!(err, "imported {files} files, {bytes} bytes").map_err(out_err)?;
        }
        Command::Fsck { repair, verify, .. } => {
            let rebuilt = opened.and_then(|o| o.rebuilt.as_ref());
            let made_anew = opened.map_or(&[][..], |o| &o.made_anew[..]);
            return fsck(store, rebuilt, made_anew, *repair, *verify, &mut out);
        }
        Command::Mount { .. } | Command::Umount { .. } => {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "mount commands run on their own",
            ));
        }
        Command::Reindex => {
            let bar = spinner("indexing");
            let n = reconcile::reindex(store.index(), store.backend().as_ref(), &mut |n| {
                bar.set_position(n)
            })?;
            bar.finish_and_clear();
            writeln!(out, "indexed {n} keys").map_err(out_err)?;
        }
    }
    out.flush().map_err(out_err)?;
    Ok(ExitCode::SUCCESS)
}

/// How many keys the index has under `part`'s prefix and not under a part nested below it.
fn indexed_keys_of(store: &IndexedStore, part: &spec::MissingPart) -> Result<u64, Error> {
    let keys = store.query(crate::datastore::Query {
        prefix: part.prefix.as_str().to_owned(),
        keys_only: true,
        ..Default::default()
    })?;
    let mut n = 0;
    for entry in keys {
        let key = entry?.key;
        if !part
            .nested
            .iter()
            .any(|p| *p == key || p.is_ancestor_of(&key))
        {
            n += 1;
        }
    }
    Ok(n)
}

/// `dsfs fsck`: the store's own check (debris, lost and damaged values), then index against
/// store. Every problem is printed once, after a summary line that counts them; the exit status
/// is 0 exactly when the summary says nothing is left to repair.
fn fsck(
    store: &Arc<IndexedStore>,
    rebuilt: Option<&Salvaged>,
    made_anew: &[spec::MissingPart],
    repair: bool,
    verify: bool,
    out: &mut dyn Write,
) -> Result<ExitCode, Error> {
    // Problems found, and whether each one was repaired.
    let mut lines: Vec<(String, bool)> = Vec::new();
    for part in made_anew {
        // Counted before the index check below removes them.
        let dropped = indexed_keys_of(store, part)?;
        lines.push((
            format!(
                "store: {} (the store of the keys under {}) was missing; an empty one was made \
                 there, and the {dropped} indexed keys it held are dropped from the index \
                 (listed below as index entries without a value)",
                part.absent.path.display(),
                part.prefix
            ),
            true,
        ));
    }
    if let Some(salvaged) = rebuilt {
        lines.push((
            format!(
                "index: the index file was damaged; it was moved aside and rebuilt from the store ({})",
                salvaged.summary()
            ),
            true,
        ));
    }
    let backend = store.backend();
    let scrubbed = if verify {
        backend.verify(repair)
    } else {
        backend.scrub(repair)
    };
    // A store's repair leaves some problems for a person (flatfs and the tiered store leave a
    // symlink or FIFO where a data file belongs): a problem counts as repaired only if a
    // check after the repair no longer finds it.
    let left: Option<std::collections::HashSet<String>> = match (&scrubbed, repair) {
        (Ok(problems), true) if !problems.is_empty() => match backend.scrub(false) {
            Ok(left) => Some(left.into_iter().collect()),
            Err(e) => {
                lines.push((
                    format!("store: the check after the repair failed: {e}"),
                    false,
                ));
                None
            }
        },
        _ => None,
    };
    match scrubbed {
        Ok(problems) => {
            for p in problems {
                let fixed = repair && left.as_ref().is_some_and(|left| !left.contains(&p));
                lines.push((format!("store: {p}"), fixed));
            }
        }
        Err(e) => lines.push((format!("store: the store's check failed: {e}"), false)),
    }
    let bar = spinner("checking");
    let report = reconcile::check(store.index(), backend.as_ref(), repair, &mut |n| {
        bar.set_position(n)
    });
    bar.finish_and_clear();
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            writeln!(out, "the check could not run to the end: {e}").map_err(out_err)?;
            for (line, _) in &lines {
                writeln!(out, "  {line}").map_err(out_err)?;
            }
            out.flush().map_err(out_err)?;
            return Ok(ExitCode::FAILURE);
        }
    };
    for (drift, key) in &report.examples {
        lines.push((format!("index: {drift}: {key}"), repair));
    }
    let more = report.unlisted + report.dangling + report.wrong_size;
    let shown = report.examples.len() as u64;
    for e in &report.errors {
        // A value that cannot be read is not repaired by the index; the store's repair above
        // handles the ones it can.
        lines.push((format!("store: cannot read: {e}"), false));
    }
    let problems = lines.len() as u64
        + more.saturating_sub(shown)
        + report.unreadable.saturating_sub(report.errors.len() as u64);
    let unrepaired = lines.iter().filter(|(_, fixed)| !fixed).count() as u64
        + if repair {
            0
        } else {
            more.saturating_sub(shown)
        }
        + report.unreadable.saturating_sub(report.errors.len() as u64);
    let counted = if problems == 1 {
        "1 problem".to_owned()
    } else {
        format!("{problems} problems")
    };
    let state = if problems == 0 {
        "consistent".to_owned()
    } else if unrepaired == 0 {
        format!("{counted}, all repaired")
    } else if repair {
        format!("{counted}, {unrepaired} not repaired")
    } else {
        counted
    };
    writeln!(
        out,
        "{} keys in store, {} in index: {state}",
        report.store_keys, report.index_keys
    )
    .map_err(out_err)?;
    for (line, fixed) in &lines {
        let note = if *fixed && !line.starts_with("index: the index file") {
            " (repaired)"
        } else {
            ""
        };
        writeln!(out, "  {line}{note}").map_err(out_err)?;
    }
    if more > shown {
        writeln!(out, "  ... and {} more index entries", more - shown).map_err(out_err)?;
    }
    if unrepaired > 0 && !repair {
        writeln!(
            out,
            "run 'dsfs fsck --repair' to repair what can be repaired"
        )
        .map_err(out_err)?;
    }
    out.flush().map_err(out_err)?;
    if unrepaired > 0 {
        return Ok(ExitCode::FAILURE);
    }
    // Nothing is left of an unclean stop: the next open need not reconcile again.
    store.index().mark_reconciled();
    Ok(ExitCode::SUCCESS)
}

/// A key as one printable line: backslashes and control characters become C escapes.
fn escape_key(key: &str) -> std::borrow::Cow<'_, str> {
    if !key.chars().any(|c| c == '\\' || c.is_control()) {
        return std::borrow::Cow::Borrowed(key);
    }
    let mut out = String::with_capacity(key.len() + 8);
    for c in key.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() && c.is_ascii() => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if c.is_control() => out.push_str(&format!("\\u{{{:04x}}}", c as u32)),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// `size-N` (Kubo's fixed-size chunker).
fn parse_chunker(text: &str) -> Result<usize, Error> {
    text.strip_prefix("size-")
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|n| (1..=(1 << 20)).contains(n))
        .ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidArgument,
                format!(
                    "--chunker {text:?}: dsfs knows size-N, N from 1 to 1048576 (Kubo's default is size-262144)"
                ),
            )
        })
}

/// Blocks of an `add`, written in batches.
struct BlockBatch<'a> {
    store: &'a dyn Datastore,
    batch: Box<dyn crate::datastore::Batch + 'a>,
    pending: usize,
}

impl<'a> BlockBatch<'a> {
    /// Blocks per batch commit.
    const SIZE: usize = 256;

    fn new(store: &'a dyn Datastore) -> Result<BlockBatch<'a>, Error> {
        Ok(BlockBatch {
            store,
            batch: store.batch()?,
            pending: 0,
        })
    }

    fn commit(self) -> Result<(), Error> {
        self.batch.commit()
    }
}

impl crate::unixfs::BlockSink for BlockBatch<'_> {
    fn put_block(&mut self, cid: &cid::Cid, bytes: &[u8]) -> Result<(), Error> {
        self.batch
            .put(crate::cid::block_key(cid.hash()), bytes.to_vec())?;
        self.pending += 1;
        if self.pending >= Self::SIZE {
            let full = std::mem::replace(&mut self.batch, self.store.batch()?);
            full.commit()?;
            self.pending = 0;
        }
        Ok(())
    }
}

fn spinner_bytes(what: &str) -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg}: {bytes} ({bytes_per_sec})")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.set_message(what.to_owned());
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    bar
}

fn spinner(what: &str) -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg}: {pos} keys ({per_sec})")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.set_message(what.to_owned());
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    bar
}

fn bytes_bar(total: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_message(what.to_owned());
    bar
}

fn read_input(file: Option<&Path>, input: &mut dyn Read) -> Result<Vec<u8>, Error> {
    let mut data = Vec::new();
    match file {
        None => input
            .read_to_end(&mut data)
            .map_err(|e| Error::io("reading standard input", e))?,
        Some(p) if p == Path::new("-") => input
            .read_to_end(&mut data)
            .map_err(|e| Error::io("reading standard input", e))?,
        Some(p) => File::open(p)
            .and_then(|mut f| f.read_to_end(&mut data))
            .map_err(|e| Error::io(format!("reading {}", p.display()), e))?,
    };
    Ok(data)
}

/// Puts a file (large ones streamed through a staging file with progress) or standard input.
fn put_from(
    store: &dyn Datastore,
    key: &Key,
    file: Option<&Path>,
    input: &mut dyn Read,
) -> Result<(), Error> {
    let Some(path) = file.filter(|p| *p != Path::new("-")) else {
        let data = read_input(None, input)?;
        return store.put(key, &data);
    };
    let mut f =
        File::open(path).map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    let len = f
        .metadata()
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?
        .len();
    if len < STREAM_THRESHOLD {
        let mut data = Vec::with_capacity(len as usize);
        f.read_to_end(&mut data)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        return store.put(key, &data);
    }
    let staged = store.stage(key, StageInit::Empty)?;
    let bar = bytes_bar(len, key.as_ref());
    let mut buf = vec![0u8; COPY_CHUNK];
    let mut offset = 0u64;
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        if n == 0 {
            break;
        }
        staged.write_all_at(offset, &buf[..n])?;
        offset += n as u64;
        bar.set_position(offset);
    }
    bar.finish_and_clear();
    store.commit_staged(key, staged, false)
}

/// A store's `NotFound` for `key` as the CLI says it.
fn not_found_key(key: &Key, e: Error) -> Error {
    match e.kind() {
        ErrorKind::NotFound => Error::new(ErrorKind::NotFound, format!("{key}: no such key")),
        _ => e,
    }
}

/// Streams the `size` bytes of a value out in ranged reads, so a large value never sits in
/// memory whole.
fn copy_out(store: &dyn Datastore, key: &Key, size: u64, out: &mut dyn Write) -> Result<(), Error> {
    let mut buf = vec![0u8; COPY_CHUNK.min(size.max(1) as usize)];
    let mut offset = 0u64;
    while offset < size {
        let n = store.read_at(key, offset, &mut buf)?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n]).map_err(out_err)?;
        offset += n as u64;
    }
    if offset < size {
        return Err(Error::new(
            ErrorKind::Corrupt,
            format!(
                "{key}: the value ended after {offset} of its {size} bytes (damaged? 'dsfs fsck' checks)"
            ),
        ));
    }
    Ok(())
}

/// Copies `source` (a file or a tree) under `prefix`, committing every `batch` small files.
fn import(
    store: &dyn Datastore,
    source: &Path,
    prefix: &Key,
    batch: usize,
) -> Result<(u64, u64), Error> {
    let mut files: Vec<(PathBuf, Key, u64)> = Vec::new();
    collect_files(source, prefix, &mut files)?;
    let total: u64 = files.iter().map(|f| f.2).sum();
    let bar = bytes_bar(total, "importing");
    let mut pending = store.batch()?;
    let mut in_batch = 0;
    let mut done = 0u64;
    for (path, key, len) in &files {
        if *len >= STREAM_THRESHOLD {
            put_from(store, key, Some(path), &mut io::empty())?;
        } else {
            let data = std::fs::read(path)
                .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
            pending.put(key.clone(), data)?;
            in_batch += 1;
            if in_batch >= batch {
                pending.commit()?;
                pending = store.batch()?;
                in_batch = 0;
            }
        }
        done += len;
        bar.set_position(done);
    }
    pending.commit()?;
    bar.finish_and_clear();
    Ok((files.len() as u64, total))
}

fn collect_files(path: &Path, key: &Key, out: &mut Vec<(PathBuf, Key, u64)>) -> Result<(), Error> {
    let meta = std::fs::symlink_metadata(path)
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    if meta.is_file() {
        let key = if out.is_empty() && key.is_root() {
            // A single file imported to the root keeps its name.
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| name_error(path))?;
            key.join_component(name)?
        } else {
            key.clone()
        };
        out.push((path.to_path_buf(), key, meta.len()));
    } else if meta.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(path)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?
            .collect::<Result<_, _>>()
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let name = entry.file_name();
            let name = name.to_str().ok_or_else(|| name_error(&entry.path()))?;
            let child = key.join_component(name)?;
            let child_meta = std::fs::symlink_metadata(entry.path())
                .map_err(|e| Error::io(format!("reading {}", entry.path().display()), e))?;
            if child_meta.is_dir() {
                collect_files(&entry.path(), &child, out)?;
            } else if child_meta.is_file() {
                out.push((entry.path(), child, child_meta.len()));
            } else {
                log::warn!(
                    "skipping {}: not a regular file or directory",
                    entry.path().display()
                );
            }
        }
    } else {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            format!("{}: not a regular file or directory", path.display()),
        ));
    }
    Ok(())
}

fn name_error(path: &Path) -> Error {
    Error::new(
        ErrorKind::InvalidKey,
        format!(
            "{}: file names must be UTF-8 to become keys",
            path.display()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::escape_key;

    #[test]
    fn listed_keys_escape_control_characters_and_backslashes() {
        assert_eq!(escape_key("/plain/key.txt"), "/plain/key.txt");
        assert_eq!(escape_key("/a\nb"), "/a\\nb");
        assert_eq!(escape_key("/tab\there"), "/tab\\there");
        assert_eq!(escape_key("/back\\slash"), "/back\\\\slash");
        assert_eq!(escape_key("/esc\u{1b}[0m"), "/esc\\x1b[0m");
        assert_eq!(escape_key("/del\u{7f}"), "/del\\x7f");
        assert_eq!(escape_key("/caf\u{e9}"), "/caf\u{e9}");
    }
}
