//! A model-based test of `DsFs`: random sequences of create/write, truncate, rename, exchange,
//! link, unlink, mkdir, rmdir, fsync, close-and-reopen and crash-and-reopen, applied both to the
//! filesystem and to a reference tree (names to inode numbers to bytes), on several stores;
//! after every sequence, and after every reopen, the filesystem must hold exactly the reference
//! tree. A crash runs the operations before it in a child process (this test binary again),
//! which dies with `_exit` without closing anything, as a killed daemon would; the reopened
//! filesystem must then hold every file whose name and bytes were fsynced and not changed
//! since, and it becomes the reference for the operations after the crash.
//! `PROPTEST_CASES` sets the cases per store (default 128: 512 in all).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use dsfs::fs::{Ctx, DsFs, FileKind, FsOptions, RenameFlags, SetAttr};
use dsfs::index::ROOT;
use dsfs::spec::{OpenMode, StoreSpec};
use proptest::prelude::*;

const CTX: Ctx = Ctx { uid: 0, gid: 0 };
const FILES: [&str; 3] = ["a", "b", "c"];
const DIRS: [&str; 2] = ["d", "e"];

#[derive(Clone, Debug)]
enum Op {
    Write(String, Vec<u8>),
    Truncate(String, u64),
    Rename(String, String),
    Exchange(String, String),
    Link(String, String),
    Unlink(String),
    Mkdir(String),
    Rmdir(String),
    Fsync(String),
    Reopen,
    Crash,
}

fn path() -> impl Strategy<Value = String> {
    (0..3usize, 0..3usize).prop_map(|(d, f)| match d {
        0 => FILES[f].to_string(),
        d => format!("{}/{}", DIRS[d - 1], FILES[f]),
    })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (path(), prop::collection::vec(any::<u8>(), 0..300)).prop_map(|(p, d)| Op::Write(p, d)),
        1 => (path(), 0..400u64).prop_map(|(p, n)| Op::Truncate(p, n)),
        2 => (path(), path()).prop_map(|(a, b)| Op::Rename(a, b)),
        1 => (path(), path()).prop_map(|(a, b)| Op::Exchange(a, b)),
        1 => (path(), path()).prop_map(|(a, b)| Op::Link(a, b)),
        2 => path().prop_map(Op::Unlink),
        1 => (0..2usize).prop_map(|d| Op::Mkdir(DIRS[d].into())),
        1 => (0..2usize).prop_map(|d| Op::Rmdir(DIRS[d].into())),
        1 => path().prop_map(Op::Fsync),
        1 => Just(Op::Reopen),
        1 => Just(Op::Crash),
    ]
}

/// The reference: file names to inode numbers, inode numbers to bytes, and directories.
#[derive(Default, Debug)]
struct Model {
    names: BTreeMap<String, u32>,
    files: BTreeMap<u32, Vec<u8>>,
    dirs: BTreeSet<String>,
    next: u32,
    /// Names whose file and bytes an fsync made durable and that have not changed since:
    /// what a crash must keep.
    synced: BTreeMap<String, (u32, Vec<u8>)>,
}

impl Model {
    fn parent_exists(&self, p: &str) -> bool {
        match p.split_once('/') {
            Some((d, _)) => self.dirs.contains(d),
            None => true,
        }
    }
    fn gc(&mut self) {
        let live: BTreeSet<u32> = self.names.values().copied().collect();
        self.files.retain(|k, _| live.contains(k));
    }
    /// Forgets the fsynced state of every name whose file or bytes changed (after each
    /// operation, so a change that is later undone still counts).
    fn settle(&mut self) {
        let (names, files) = (&self.names, &self.files);
        self.synced
            .retain(|p, (id, data)| names.get(p) == Some(id) && files.get(id) == Some(data));
    }
}

/// A store the model runs on: a spec, and whether it survives a reopen.
struct Factory {
    name: &'static str,
    spec: fn(&std::path::Path) -> String,
    persistent: bool,
    atomic_exchange: bool,
}

const FACTORIES: [Factory; 4] = [
    Factory {
        name: "mem",
        spec: |_| "mem:".into(),
        persistent: false,
        atomic_exchange: true,
    },
    Factory {
        name: "redb",
        spec: |d| format!("redb:{}", d.join("v.redb").display()),
        persistent: true,
        atomic_exchange: true,
    },
    Factory {
        name: "repository",
        spec: |d| d.join("repo").display().to_string(),
        persistent: true,
        atomic_exchange: true,
    },
    Factory {
        name: "flatfs-encoded",
        spec: |d| format!("flatfs:{}?encode=true", d.join("blocks").display()),
        persistent: true,
        atomic_exchange: false,
    },
];

/// Opens the store and a filesystem on it. A store just closed can still look locked for a
/// moment: the tests run in parallel threads of one process, and a child process another test
/// is starting (`crash_in_child`) holds a copy of every descriptor of this process, the store's
/// `flock`ed lock file included, until its `exec` closes them. So `Locked` is retried briefly.
fn mount(spec: &str) -> DsFs {
    let spec = StoreSpec::parse(spec).unwrap();
    let mut tries = 0;
    let opened = loop {
        // Each model run starts from a fresh store.
        let mode = OpenMode {
            create: true,
            ..OpenMode::default()
        };
        match dsfs::spec::open(&spec, mode) {
            Err(e) if e.kind() == dsfs::datastore::ErrorKind::Locked && tries < 100 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            r => break r.unwrap(),
        }
    };
    DsFs::new(opened.store, FsOptions::default())
}

/// The inode of `path`, if it exists.
fn lookup(fs: &DsFs, path: &str) -> Option<u64> {
    let mut ino = ROOT;
    for c in path.split('/') {
        ino = fs.lookup(ino, c.as_bytes()).ok()?.ino;
    }
    Some(ino)
}

fn split(path: &str) -> (&str, &str) {
    path.rsplit_once('/').unwrap_or(("", path))
}

fn parent_ino(fs: &DsFs, path: &str) -> Option<u64> {
    match split(path).0 {
        "" => Some(ROOT),
        d => lookup(fs, d),
    }
}

fn read_all(fs: &DsFs, ino: u64) -> Vec<u8> {
    let o = fs.open(ino, libc::O_RDONLY).unwrap();
    let data = fs.read(o.fh, 0, 1 << 20).unwrap();
    fs.release(o.fh).unwrap();
    data
}

/// Applies `op` to the filesystem and the model; the two must agree on success.
fn apply(fs: &DsFs, m: &mut Model, op: &Op, exchange_ok: bool) -> Result<(), TestCaseError> {
    match op {
        Op::Write(p, data) => {
            let ok = m.parent_exists(p) && !m.dirs.contains(p.as_str());
            let parent = parent_ino(fs, p);
            prop_assert_eq!(parent.is_some(), m.parent_exists(p));
            let Some(parent) = parent else { return Ok(()) };
            let name = split(p).1;
            let r = fs.create(
                CTX,
                parent,
                name.as_bytes(),
                0o644,
                0,
                libc::O_WRONLY | libc::O_TRUNC,
            );
            prop_assert_eq!(r.is_ok(), ok, "create {}: {:?}", p, r.as_ref().err());
            if let Ok((_, o)) = r {
                fs.write(o.fh, 0, data).unwrap();
                fs.release(o.fh).unwrap();
                let id = *m.names.entry(p.clone()).or_insert_with(|| {
                    m.next += 1;
                    m.next
                });
                m.files.insert(id, data.clone());
            }
        }
        Op::Truncate(p, n) => {
            let Some(&id) = m.names.get(p) else {
                return Ok(());
            };
            let ino = lookup(fs, p).unwrap();
            let set = SetAttr {
                size: Some(*n),
                ..SetAttr::default()
            };
            fs.setattr(CTX, ino, &set).unwrap();
            m.files.get_mut(&id).unwrap().resize(*n as usize, 0);
        }
        Op::Rename(a, b) => {
            // Files only; the model of directory renames is not worth its bugs here.
            if !m.names.contains_key(a) || m.dirs.contains(b.as_str()) || !m.parent_exists(b) {
                return Ok(());
            }
            let (pa, pb) = (parent_ino(fs, a).unwrap(), parent_ino(fs, b).unwrap());
            fs.rename(
                pa,
                split(a).1.as_bytes(),
                pb,
                split(b).1.as_bytes(),
                RenameFlags::default(),
            )
            .map_err(|e| TestCaseError::fail(format!("rename {a} {b}: {e}")))?;
            if a != b && m.names.get(a) != m.names.get(b) {
                let id = m.names.remove(a).unwrap();
                m.names.insert(b.clone(), id);
                m.gc();
            }
        }
        Op::Exchange(a, b) => {
            if a == b || !m.names.contains_key(a) || !m.names.contains_key(b) {
                return Ok(());
            }
            let (pa, pb) = (parent_ino(fs, a).unwrap(), parent_ino(fs, b).unwrap());
            let flags = RenameFlags {
                exchange: true,
                ..RenameFlags::default()
            };
            let r = fs.rename(pa, split(a).1.as_bytes(), pb, split(b).1.as_bytes(), flags);
            let same_file = m.names.get(a) == m.names.get(b);
            match r {
                Ok(()) => {
                    let (ia, ib) = (m.names[a], m.names[b]);
                    m.names.insert(a.clone(), ib);
                    m.names.insert(b.clone(), ia);
                }
                Err(e) => prop_assert!(
                    !exchange_ok && !same_file && e.errno() == libc::EOPNOTSUPP,
                    "exchange {} {}: {}",
                    a,
                    b,
                    e
                ),
            }
        }
        Op::Link(a, b) => {
            if !m.names.contains_key(a)
                || m.names.contains_key(b)
                || m.dirs.contains(b.as_str())
                || !m.parent_exists(b)
            {
                return Ok(());
            }
            let ino = lookup(fs, a).unwrap();
            fs.link(ino, parent_ino(fs, b).unwrap(), split(b).1.as_bytes())
                .map_err(|e| TestCaseError::fail(format!("link {a} {b}: {e}")))?;
            let id = m.names[a];
            m.names.insert(b.clone(), id);
        }
        Op::Unlink(p) => {
            let parent = parent_ino(fs, p);
            let Some(parent) = parent else { return Ok(()) };
            let r = fs.unlink(parent, split(p).1.as_bytes());
            prop_assert_eq!(r.is_ok(), m.names.contains_key(p), "unlink {}: {:?}", p, r);
            m.names.remove(p);
            m.gc();
        }
        Op::Mkdir(d) => {
            let r = fs.mkdir(CTX, ROOT, d.as_bytes(), 0o755, 0);
            let free = !m.dirs.contains(d.as_str()) && !m.names.contains_key(d);
            prop_assert_eq!(r.is_ok(), free, "mkdir {}: {:?}", d, r.as_ref().err());
            m.dirs.insert(d.clone());
        }
        Op::Rmdir(d) => {
            let r = fs.rmdir(ROOT, d.as_bytes());
            let prefix = format!("{d}/");
            let empty =
                m.dirs.contains(d.as_str()) && !m.names.keys().any(|n| n.starts_with(&prefix));
            prop_assert_eq!(r.is_ok(), empty, "rmdir {}: {:?}", d, r);
            if empty {
                m.dirs.remove(d.as_str());
            }
        }
        Op::Fsync(p) => {
            let Some(ino) = lookup(fs, p) else {
                prop_assert!(!m.names.contains_key(p));
                return Ok(());
            };
            if fs.getattr(ino).unwrap().kind != FileKind::File {
                return Ok(());
            }
            let o = fs.open(ino, libc::O_WRONLY).unwrap();
            fs.fsync(o.fh).unwrap();
            fs.release(o.fh).unwrap();
            let id = m.names[p];
            let data = m.files[&id].clone();
            m.synced.insert(p.clone(), (id, data));
        }
        Op::Reopen | Op::Crash => {}
    }
    m.settle();
    Ok(())
}

/// The filesystem holds exactly the model's names, directories and bytes.
fn check(fs: &DsFs, m: &Model) -> Result<(), TestCaseError> {
    let mut seen = BTreeSet::new();
    let mut dirs = BTreeSet::new();
    let list = |ino: u64| -> Vec<(String, u64, FileKind)> {
        fs.readdir(ino, 0, 10_000)
            .unwrap()
            .into_iter()
            .filter(|i| i.name != "." && i.name != "..")
            .map(|i| (i.name, i.ino, i.attr.kind))
            .collect()
    };
    for (name, ino, kind) in list(ROOT) {
        if kind == FileKind::Dir {
            dirs.insert(name.clone());
            for (child, cino, _) in list(ino) {
                seen.insert((format!("{name}/{child}"), cino));
            }
        } else {
            seen.insert((name, ino));
        }
    }
    prop_assert_eq!(&dirs, &m.dirs);
    let names: BTreeSet<&String> = seen.iter().map(|(n, _)| n).collect();
    let want: BTreeSet<&String> = m.names.keys().collect();
    prop_assert_eq!(names, want);
    for (name, ino) in &seen {
        let want = &m.files[&m.names[name]];
        prop_assert_eq!(&read_all(fs, *ino), want, "content of {}", name);
        prop_assert_eq!(fs.getattr(*ino).unwrap().size, want.len() as u64);
    }
    Ok(())
}

fn run(factory: &Factory, ops: &[Op]) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let spec = (factory.spec)(dir.path());
    let crash = ops.iter().position(|o| matches!(o, Op::Crash));
    let (mut fs, mut m, rest) = match crash {
        Some(at) if factory.persistent => {
            let synced = crash_in_child(&spec, factory, &ops[..at])?;
            let fs = mount(&spec);
            let m = after_crash(&fs, &synced)?;
            (Arc::new(fs), m, &ops[at + 1..])
        }
        _ => (Arc::new(mount(&spec)), Model::default(), ops),
    };
    for op in rest {
        if let Op::Reopen | Op::Crash = op {
            if factory.persistent {
                fs.shutdown().unwrap();
                drop(fs);
                fs = Arc::new(mount(&spec));
                check(&fs, &m)?;
            }
            continue;
        }
        apply(&fs, &mut m, op, factory.atomic_exchange)?;
    }
    check(&fs, &m)?;
    fs.shutdown().unwrap();
    Ok(())
}

/// The environment variable that makes `crash_child` run: the file with its work.
const CRASH_ENV: &str = "DSFS_MODEL_CRASH";

/// Runs `ops` on `spec` in a child process that then dies without closing anything; returns
/// what the child's model says the crash must keep (name, bytes).
fn crash_in_child(
    spec: &str,
    factory: &Factory,
    ops: &[Op],
) -> Result<Vec<(String, Vec<u8>)>, TestCaseError> {
    let work = tempfile::NamedTempFile::new().unwrap();
    let mut text = format!("{spec}\n{}\n", factory.atomic_exchange);
    for op in ops {
        text.push_str(&encode_op(op));
        text.push('\n');
    }
    std::fs::write(work.path(), text).unwrap();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child", "--ignored", "--nocapture"])
        .args(["--test-threads", "1"])
        .env(CRASH_ENV, work.path())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    let errs = String::from_utf8_lossy(&out.stderr);
    prop_assert!(out.status.success(), "the child failed: {}\n{}", said, errs);
    let result = std::fs::read_to_string(work.path()).unwrap();
    let mut synced = Vec::new();
    let mut lines = result.lines();
    prop_assert_eq!(
        lines.next(),
        Some("synced"),
        "the child did not finish: {}",
        errs
    );
    for line in lines {
        let (p, hex) = line.split_once(' ').unwrap();
        synced.push((p.to_owned(), unhex(hex)));
    }
    Ok(synced)
}

/// The reopened filesystem after a crash: every fsynced name holds its bytes; whatever else
/// survived becomes the model for the operations that follow.
fn after_crash(fs: &DsFs, synced: &[(String, Vec<u8>)]) -> Result<Model, TestCaseError> {
    for (p, want) in synced {
        let Some(ino) = lookup(fs, p) else {
            return Err(TestCaseError::fail(format!(
                "{p} was fsynced and is gone after the crash"
            )));
        };
        prop_assert_eq!(&read_all(fs, ino), want, "{} after the crash", p);
    }
    let mut m = Model::default();
    let mut ids: BTreeMap<u64, u32> = BTreeMap::new();
    for (name, ino, kind) in listing(fs, ROOT) {
        if kind == FileKind::Dir {
            m.dirs.insert(name.clone());
            for (child, cino, ckind) in listing(fs, ino) {
                prop_assert_eq!(ckind, FileKind::File, "{}/{}", name, child);
                model_file(fs, &mut m, &mut ids, format!("{name}/{child}"), cino);
            }
        } else {
            prop_assert_eq!(kind, FileKind::File, "{}", name);
            model_file(fs, &mut m, &mut ids, name, ino);
        }
    }
    Ok(m)
}

fn model_file(fs: &DsFs, m: &mut Model, ids: &mut BTreeMap<u64, u32>, path: String, ino: u64) {
    let id = *ids.entry(ino).or_insert_with(|| {
        m.next += 1;
        m.next
    });
    m.files.entry(id).or_insert_with(|| read_all(fs, ino));
    m.names.insert(path, id);
}

fn listing(fs: &DsFs, ino: u64) -> Vec<(String, u64, FileKind)> {
    fs.readdir(ino, 0, 10_000)
        .unwrap()
        .into_iter()
        .filter(|i| i.name != "." && i.name != "..")
        .map(|i| (i.name, i.ino, i.attr.kind))
        .collect()
}

fn hex(data: &[u8]) -> String {
    let mut s: String = data.iter().map(|b| format!("{b:02x}")).collect();
    if s.is_empty() {
        s.push('-');
    }
    s
}

fn unhex(s: &str) -> Vec<u8> {
    if s == "-" {
        return Vec::new();
    }
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

fn encode_op(op: &Op) -> String {
    match op {
        Op::Write(p, d) => format!("W {p} {}", hex(d)),
        Op::Truncate(p, n) => format!("T {p} {n}"),
        Op::Rename(a, b) => format!("R {a} {b}"),
        Op::Exchange(a, b) => format!("X {a} {b}"),
        Op::Link(a, b) => format!("L {a} {b}"),
        Op::Unlink(p) => format!("U {p}"),
        Op::Mkdir(d) => format!("M {d}"),
        Op::Rmdir(d) => format!("D {d}"),
        Op::Fsync(p) => format!("F {p}"),
        Op::Reopen => "O".into(),
        Op::Crash => "C".into(),
    }
}

fn decode_op(line: &str) -> Op {
    let w: Vec<&str> = line.split(' ').collect();
    let s = |i: usize| w[i].to_owned();
    match w[0] {
        "W" => Op::Write(s(1), unhex(w[2])),
        "T" => Op::Truncate(s(1), w[2].parse().unwrap()),
        "R" => Op::Rename(s(1), s(2)),
        "X" => Op::Exchange(s(1), s(2)),
        "L" => Op::Link(s(1), s(2)),
        "U" => Op::Unlink(s(1)),
        "M" => Op::Mkdir(s(1)),
        "D" => Op::Rmdir(s(1)),
        "F" => Op::Fsync(s(1)),
        "O" => Op::Reopen,
        other => panic!("unknown operation {other}"),
    }
}

/// The child side of a crash (run by `crash_in_child` only): applies the operations in the file
/// named by `DSFS_MODEL_CRASH`, writes what the model says must survive into the same file, and
/// dies at once: no shutdown, no destructors, no final commit.
#[test]
#[ignore = "run by the model tests as the process that crashes"]
fn crash_child() {
    let Ok(work) = std::env::var(CRASH_ENV) else {
        return;
    };
    let text = std::fs::read_to_string(&work).unwrap();
    let mut lines = text.lines();
    let spec = lines.next().unwrap().to_owned();
    let exchange_ok: bool = lines.next().unwrap().parse().unwrap();
    let mut fs = mount(&spec);
    let mut m = Model::default();
    for line in lines {
        let op = decode_op(line);
        if let Op::Reopen = op {
            fs.shutdown().unwrap();
            drop(fs);
            fs = mount(&spec);
            if let Err(e) = check(&fs, &m) {
                panic!("after a reopen in the child: {e}");
            }
            continue;
        }
        if let Err(e) = apply(&fs, &mut m, &op, exchange_ok) {
            panic!("{line}: {e}");
        }
    }
    let mut out = String::from("synced\n");
    for (p, (_, data)) in &m.synced {
        out.push_str(&format!("{p} {}\n", hex(data)));
    }
    std::fs::write(&work, out).unwrap();
    // SAFETY: _exit ends the process at once; nothing of ours runs after it, which is the
    // point: the filesystem and its stores are never closed.
    unsafe { libc::_exit(0) }
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(128),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

macro_rules! model_test {
    ($name:ident, $i:expr) => {
        proptest! {
            #![proptest_config(config())]
            #[test]
            fn $name(ops in prop::collection::vec(op(), 1..25)) {
                run(&FACTORIES[$i], &ops)?;
            }
        }
    };
}

model_test!(the_filesystem_follows_the_model_on_mem, 0);
model_test!(the_filesystem_follows_the_model_on_redb, 1);
model_test!(
    the_filesystem_follows_the_model_on_the_default_repository,
    2
);
model_test!(the_filesystem_follows_the_model_on_encoded_flatfs, 3);

#[test]
fn the_factories_are_named() {
    let names: Vec<&str> = FACTORIES.iter().map(|f| f.name).collect();
    assert_eq!(names, ["mem", "redb", "repository", "flatfs-encoded"]);
}
