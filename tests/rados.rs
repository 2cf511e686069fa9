//! The RADOS store against a live cluster: start one with `tests/ceph/cluster.sh start` and
//! export the `DSFS_TEST_CEPH_*` lines it prints, then `cargo test --features rados --test
//! rados`. Without a cluster every test here says so and passes, unless `CI` is set, where a
//! missing cluster is a failure.

#![cfg(feature = "rados")]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Mount, bytes, eventually, fio_verify, have_fio, sh};
use dsfs::backend::rados::{RadosOptions, RadosStore};
use dsfs::{Datastore, ErrorKind, Key};

/// How long a change made beside the mount may take to show (revalidation interval plus the
/// kernel's attribute cache, with room for a loaded machine).
const WAIT: Duration = Duration::from_secs(30);

/// The cluster the environment names.
struct Ceph {
    conf: PathBuf,
    pool: String,
    id: String,
}

fn ceph() -> Option<Ceph> {
    let conf = std::env::var_os("DSFS_TEST_CEPH_CONF");
    let Some(conf) = conf else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but DSFS_TEST_CEPH_CONF is not: the Ceph cluster did not start"
        );
        eprintln!(
            "no Ceph cluster (DSFS_TEST_CEPH_CONF unset): skipping; start one with \
             tests/ceph/cluster.sh start and export what it prints"
        );
        return None;
    };
    Some(Ceph {
        conf: PathBuf::from(conf),
        pool: std::env::var("DSFS_TEST_CEPH_POOL").unwrap_or_else(|_| "dsfs".into()),
        id: std::env::var("DSFS_TEST_CEPH_ID").unwrap_or_else(|_| "dsfs".into()),
    })
}

/// A namespace of its own for each test, so tests share the pool without seeing each other.
fn namespace(test: &str) -> String {
    let mut n = [0u8; 4];
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    n.copy_from_slice(&(t as u32).to_le_bytes());
    format!(
        "{test}-{}-{:08x}",
        std::process::id(),
        u32::from_le_bytes(n)
    )
}

impl Ceph {
    fn options(&self, namespace: &str) -> RadosOptions {
        RadosOptions {
            conf: self.conf.clone(),
            id: self.id.clone(),
            namespace: namespace.to_owned(),
            timeout: Duration::from_secs(20),
            ..RadosOptions::new(self.pool.clone())
        }
    }

    fn store(&self, namespace: &str) -> RadosStore {
        RadosStore::open(self.options(namespace)).unwrap()
    }

    fn spec(&self, namespace: &str, index: &Path) -> String {
        format!(
            "rados:{}?conf={}&id={}&prefix={namespace}&index={}",
            self.pool,
            self.conf.display(),
            self.id,
            index.display()
        )
    }

    /// The `rados` command line tool on this namespace.
    fn rados(&self, namespace: &str, args: &[&str]) -> String {
        let out = Command::new("rados")
            .arg("--conf")
            .arg(&self.conf)
            .args(["--id", &self.id, "-p", &self.pool, "-N", namespace])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "rados {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

fn k(s: &str) -> Key {
    Key::new(s)
}

#[test]
fn a_missing_pool_is_one_clear_line() {
    let Some(c) = ceph() else { return };
    let options = RadosOptions {
        pool: "no-such-pool".into(),
        ..c.options("x")
    };
    let err = RadosStore::open(options).err().unwrap();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    let text = err.to_string();
    assert!(text.contains("\"no-such-pool\" does not exist"), "{text}");
    assert!(!text.contains('\n'), "{text}");
}

#[test]
fn a_bad_keyring_is_one_clear_line() {
    let Some(c) = ceph() else { return };
    let dir = tempfile::tempdir().unwrap();
    let keyring = dir.path().join("keyring");
    std::fs::write(
        &keyring,
        format!(
            "[client.{}]\n\tkey = AQBqqhlpAAAAABAAWZ9dCSKn1Uvgr9b5pdDqKQ==\n",
            c.id
        ),
    )
    .unwrap();
    let conf = dir.path().join("ceph.conf");
    let text = std::fs::read_to_string(&c.conf).unwrap();
    std::fs::write(
        &conf,
        text.replacen(
            "[global]",
            &format!("[global]\nkeyring = {}", keyring.display()),
            1,
        )
        .lines()
        .filter(|l| !l.starts_with("keyring = ") || l.contains(dir.path().to_str().unwrap()))
        .map(|l| format!("{l}\n"))
        .collect::<String>(),
    )
    .unwrap();
    let options = RadosOptions {
        conf,
        timeout: Duration::from_secs(5),
        ..c.options("x")
    };
    let err = RadosStore::open(options).err().unwrap();
    let text = err.to_string();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{text}");
    assert!(text.contains("refused client."), "{text}");
    assert!(!text.contains('\n'), "{text}");
}

#[test]
fn an_unreachable_monitor_fails_within_the_timeout() {
    let Some(c) = ceph() else { return };
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("ceph.conf");
    let text = std::fs::read_to_string(&c.conf).unwrap();
    let text: Vec<String> = text
        .lines()
        .map(|l| {
            if l.starts_with("mon host") {
                "mon host = [v2:127.0.0.1:9,v1:127.0.0.1:10]".to_owned()
            } else {
                l.to_owned()
            }
        })
        .collect();
    std::fs::write(&conf, text.join("\n") + "\n").unwrap();
    let options = RadosOptions {
        conf,
        timeout: Duration::from_secs(3),
        ..c.options("x")
    };
    let began = Instant::now();
    let err = RadosStore::open(options).err().unwrap();
    // A hang check, not a speed check: the bound is the configured 3 s with ample slack.
    assert!(
        began.elapsed() < Duration::from_secs(30),
        "{:?}",
        began.elapsed()
    );
    assert_eq!(err.kind(), ErrorKind::TimedOut, "{err}");
    assert!(
        err.to_string().contains("no monitor answered within 3 s"),
        "{err}"
    );
}

#[test]
fn large_values_are_replaced_whole_and_leave_no_data_objects_behind() {
    let Some(c) = ceph() else { return };
    let ns = namespace("large");
    let store = c.store(&ns);
    let first = bytes(1, 9 << 20);
    let second = bytes(2, (5 << 20) + 17);
    store.put(&k("/big"), &first).unwrap();
    store.put(&k("/big"), &second).unwrap();
    assert_eq!(store.get(&k("/big")).unwrap(), second);
    let mut buf = vec![0u8; 100];
    let at = (4 << 20) - 50;
    assert_eq!(store.read_at(&k("/big"), at, &mut buf).unwrap(), 100);
    assert_eq!(buf, second[at as usize..at as usize + 100]);
    // Two chunks of the second value, and nothing of the first.
    let objects = c.rados(&ns, &["ls"]);
    let data: Vec<&str> = objects.lines().filter(|l| l.starts_with("data.")).collect();
    assert_eq!(data.len(), 2, "{objects}");
    store.delete(&k("/big")).unwrap();
    let objects = c.rados(&ns, &["ls"]);
    assert!(!objects.contains("data."), "{objects}");
    store.delete(&k("/big")).unwrap();
}

#[test]
fn keys_are_listed_in_order_across_shards_with_any_bytes() {
    let Some(c) = ceph() else { return };
    let store = c.store(&namespace("order"));
    let mut keys: Vec<String> = (0..300).map(|i| format!("/d/{i:04}")).collect();
    keys.push("/d/with\u{0}nul".into());
    keys.push("/d/with\u{1}one".into());
    keys.push("/e/outside".into());
    for key in &keys {
        store.put(&k(key), key.as_bytes()).unwrap();
    }
    let q = dsfs::Query {
        orders: vec![dsfs::datastore::Order::Key],
        ..dsfs::Query::prefix("/d")
    };
    let got: Vec<String> = store
        .query(q)
        .unwrap()
        .map(|e| e.unwrap().key.as_str().to_owned())
        .collect();
    let mut want: Vec<String> = keys
        .iter()
        .filter(|k| k.starts_with("/d/"))
        .cloned()
        .collect();
    want.sort();
    assert_eq!(got, want);
    assert_eq!(
        store.get(&k("/d/with\u{0}nul")).unwrap(),
        "/d/with\u{0}nul".as_bytes()
    );
}

#[test]
fn scrub_finds_and_repairs_orphans_and_dangling_records() {
    let Some(c) = ceph() else { return };
    let ns = namespace("scrub");
    let options = RadosOptions {
        orphan_grace: Duration::ZERO,
        ..c.options(&ns)
    };
    let store = RadosStore::open(options).unwrap();
    store.put(&k("/kept"), &bytes(3, 5 << 20)).unwrap();
    store.put(&k("/dangling"), &bytes(4, 5 << 20)).unwrap();
    assert_eq!(store.scrub(false).unwrap(), Vec::<String>::new());
    // A crash after the chunks were written and before the record: an orphan.
    let dir = tempfile::tempdir().unwrap();
    let chunk = dir.path().join("chunk");
    std::fs::write(&chunk, b"orphaned bytes").unwrap();
    let orphan = format!("data.{:032x}.0", 0xfeed_u128);
    c.rados(&ns, &["put", &orphan, chunk.to_str().unwrap()]);
    // Lost data objects under a record: dangling. Find the chunks of /dangling by elimination.
    let before = c.rados(&ns, &["ls"]);
    store.delete(&k("/kept")).unwrap();
    let after = c.rados(&ns, &["ls"]);
    store.put(&k("/kept"), &bytes(3, 5 << 20)).unwrap();
    let victim = after
        .lines()
        .find(|l| l.starts_with("data.") && l.ends_with(".1") && before.contains(*l))
        .unwrap()
        .to_owned();
    c.rados(&ns, &["rm", &victim]);

    let problems = store.scrub(false).unwrap();
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems.iter().any(|p| p.contains(&orphan)), "{problems:?}");
    assert!(
        problems.iter().any(|p| p.starts_with("/dangling")),
        "{problems:?}"
    );
    store.scrub(true).unwrap();
    assert_eq!(store.scrub(false).unwrap(), Vec::<String>::new());
    assert!(!store.has(&k("/dangling")).unwrap());
    assert_eq!(store.get(&k("/kept")).unwrap(), bytes(3, 5 << 20));
    assert!(!c.rados(&ns, &["ls"]).contains(&orphan));
}

#[test]
fn a_fresh_client_sees_another_clients_writes() {
    let Some(c) = ceph() else { return };
    let ns = namespace("shared");
    let a = c.store(&ns);
    a.put(&k("/x"), b"from a").unwrap();
    a.put(&k("/big"), &bytes(5, 6 << 20)).unwrap();
    let b = c.store(&ns);
    assert_eq!(b.get(&k("/x")).unwrap(), b"from a");
    assert_eq!(b.get(&k("/big")).unwrap(), bytes(5, 6 << 20));
    b.rename(&k("/x"), &k("/y")).unwrap();
    assert!(!a.has(&k("/x")).unwrap());
    assert_eq!(a.get(&k("/y")).unwrap(), b"from a");
}

// Mounted: the filesystem over rados.

fn mount(c: &Ceph, test: &str) -> Mount {
    let dir = tempfile::tempdir().unwrap();
    let spec = c.spec(&namespace(test), &dir.path().join("index.redb"));
    Mount::with_spec(dir, spec, &[])
}

#[test]
fn cp_r_onto_a_rados_mount_round_trips_also_after_remount() {
    let Some(c) = ceph() else { return };
    let mut m = mount(&c, "cp");
    let src = tempfile::tempdir().unwrap();
    for d in 0..5 {
        let sub = src.path().join(format!("d{d}"));
        std::fs::create_dir_all(&sub).unwrap();
        for f in 0..20 {
            let len = if f == 0 { 3 << 20 } else { 100 * f + d };
            std::fs::write(sub.join(format!("f{f}")), bytes((d * 100 + f) as u64, len)).unwrap();
        }
    }
    let dst = m.path("tree");
    sh(
        m.dir.path(),
        &format!(
            "cp -r {} {} && diff -r {} {}",
            src.path().display(),
            dst.display(),
            src.path().display(),
            dst.display()
        ),
    );
    m.remount();
    sh(
        m.dir.path(),
        &format!("diff -r {} {}", src.path().display(), dst.display()),
    );
}

#[test]
fn fio_with_verify_on_a_rados_mount() {
    let Some(c) = ceph() else { return };
    if !have_fio() {
        return;
    }
    let m = mount(&c, "fio");
    for (name, write, read, bs) in [
        ("seq", "write", "read", "1M"),
        ("rand", "randwrite", "randread", "4k"),
    ] {
        for rw in [write, read] {
            let (rw, bs) = (format!("--rw={rw}"), format!("--bs={bs}"));
            fio_verify(
                &m,
                name,
                &["--size=8M", "--numjobs=2", "--do_verify=1", &rw, &bs],
            );
        }
    }
}

fn names(m: &Mount) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(&m.mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn two_hosts_on_one_pool_see_each_others_closed_files() {
    let Some(c) = ceph() else { return };
    let ns = namespace("hosts");
    let a_dir = tempfile::tempdir().unwrap();
    let b_dir = tempfile::tempdir().unwrap();
    let a_spec = c.spec(&ns, &a_dir.path().join("index-a.redb"));
    let b_spec = c.spec(&ns, &b_dir.path().join("index-b.redb"));
    let a = Mount::with_spec(a_dir, a_spec, &["revalidate=1"]);
    let b = Mount::with_spec(b_dir, b_spec, &["revalidate=1"]);
    // Created on A, while B is mounted: B lists and reads it within the interval.
    std::fs::write(a.path("hello"), b"from a").unwrap();
    std::fs::write(a.path("big"), bytes(7, 5 << 20)).unwrap();
    eventually(WAIT, "B lists A's new files", || {
        names(&b) == ["big", "hello"]
    });
    assert_eq!(std::fs::read(b.path("hello")).unwrap(), b"from a");
    assert_eq!(std::fs::read(b.path("big")).unwrap(), bytes(7, 5 << 20));
    // Changed on A (another size): B reads the new value.
    std::fs::write(a.path("hello"), b"from a, changed").unwrap();
    eventually(WAIT, "B reads A's change", || {
        std::fs::read(b.path("hello")).ok().as_deref() == Some(b"from a, changed".as_slice())
    });
    // Deleted on A: gone from B.
    std::fs::remove_file(a.path("big")).unwrap();
    eventually(WAIT, "A's delete reaches B", || names(&b) == ["hello"]);
    // The kernel may keep the name for its one-second entry cache.
    eventually(WAIT, "B's name for the deleted file expires", || {
        std::fs::metadata(b.path("big")).is_err()
    });
    // Last close wins: A and B both write one file; B closes last, and that is what both
    // hosts read afterwards.
    std::fs::write(a.path("hello"), b"from a, again").unwrap();
    std::fs::write(b.path("hello"), b"from b, last").unwrap();
    // Renames on B reach A likewise.
    std::fs::rename(b.path("hello"), b.path("renamed")).unwrap();
    eventually(WAIT, "B's rename reaches A", || names(&a) == ["renamed"]);
    assert_eq!(std::fs::read(a.path("renamed")).unwrap(), b"from b, last");
    // And a host that was not mounted catches up at its next mount.
    let mut b = b;
    b.umount();
    std::fs::write(a.path("while b was away"), b"hi").unwrap();
    b.mount();
    assert_eq!(names(&b), ["renamed", "while b was away"]);
}

#[test]
fn index_shard_stamps_change_exactly_when_records_change() {
    let Some(c) = ceph() else { return };
    let ns = namespace("stamps");
    let a = c.store(&ns);
    let b = c.store(&ns);
    let before = b.segments().unwrap().unwrap();
    assert_eq!(before.len(), 16);
    assert_eq!(b.segments().unwrap().unwrap(), before, "nothing changed");
    a.put(&k("/one"), b"1").unwrap();
    let shard = b.segment_of(&k("/one")).unwrap();
    let after = b.segments().unwrap().unwrap();
    let changed: Vec<&str> = after
        .iter()
        .zip(&before)
        .filter(|(x, y)| x.stamp != y.stamp)
        .map(|(x, _)| x.name.as_str())
        .collect();
    assert_eq!(changed, [shard.as_str()]);
    assert_eq!(b.segment_keys(&shard).unwrap(), [(k("/one"), 1)]);
    // Reads change nothing.
    a.get(&k("/one")).unwrap();
    assert_eq!(b.segments().unwrap().unwrap(), after);
    a.put(&k("/one"), b"22").unwrap();
    assert_ne!(b.segments().unwrap().unwrap(), after);
    assert_eq!(b.segment_keys(&shard).unwrap(), [(k("/one"), 2)]);
    // The identity is the namespace's: the same for both clients, another for another one.
    assert_eq!(a.identity().unwrap(), b.identity().unwrap());
    assert_ne!(
        a.identity().unwrap(),
        c.store(&namespace("stamps-other")).identity().unwrap()
    );
}

#[test]
fn replacing_and_deleting_values_of_either_kind_leaves_no_data_objects() {
    let Some(c) = ceph() else { return };
    let ns = namespace("kinds");
    let store = c.store(&ns);
    let data = |c: &Ceph| {
        c.rados(&ns, &["ls"])
            .lines()
            .filter(|l| l.starts_with("data."))
            .count()
    };
    store.put(&k("/v"), b"small").unwrap();
    store.put(&k("/v"), &bytes(1, 5 << 20)).unwrap();
    assert_eq!(data(&c), 2);
    store.put(&k("/v"), b"small again").unwrap();
    assert_eq!(data(&c), 0);
    assert_eq!(store.get(&k("/v")).unwrap(), b"small again");
    store.put(&k("/v"), &bytes(2, 5 << 20)).unwrap();
    store.delete(&k("/v")).unwrap();
    assert_eq!(data(&c), 0);
    assert!(!store.has(&k("/v")).unwrap());
    store.delete(&k("/v")).unwrap();
}

#[test]
fn concurrent_writers_of_one_key_leave_only_the_winners_data_objects() {
    let Some(c) = ceph() else { return };
    let ns = namespace("race");
    let options = RadosOptions {
        chunk_size: 64 << 10,
        inline_max: 1024,
        ..c.options(&ns)
    };
    let store = Arc::new(RadosStore::open(options).unwrap());
    let handles: Vec<_> = (0..4u64)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                for i in 0..15u64 {
                    store
                        .put(&k("/contended"), &bytes(t * 100 + i, 100_000))
                        .unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    // 100,000 bytes in 64 KiB chunks: the last value's two, nothing of the 59 replaced.
    let objects = c.rados(&ns, &["ls"]);
    let data = objects.lines().filter(|l| l.starts_with("data.")).count();
    assert_eq!(data, 2, "{objects}");
    assert_eq!(store.get_size(&k("/contended")).unwrap(), 100_000);
}

#[test]
fn space_is_known_without_a_manager_daemon() {
    let Some(c) = ceph() else { return };
    // Asking the OSDs takes a client allowed to send them commands: the cluster's admin.
    let options = RadosOptions {
        id: "admin".into(),
        ..c.options(&namespace("space"))
    };
    let store = RadosStore::open(options).unwrap();
    let space = store.space().unwrap().expect("the pool's space");
    assert!(space.total > 0, "{space:?}");
    assert!(
        space.available <= space.free && space.free <= space.total,
        "{space:?}"
    );
}

#[test]
fn many_threads_write_and_read_one_store() {
    let Some(c) = ceph() else { return };
    let store = Arc::new(c.store(&namespace("threads")));
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                for i in 0..20 {
                    let key = k(&format!("/t{t}/{i}"));
                    let value = bytes(t * 100 + i, if i % 5 == 0 { 20_000 } else { 100 });
                    store.put(&key, &value).unwrap();
                    assert_eq!(store.get(&key).unwrap(), value);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let n = store.query(dsfs::Query::prefix("/")).unwrap().count();
    assert_eq!(n, 80);
}
