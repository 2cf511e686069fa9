//! Faults of a live Ceph cluster under the RADOS store: an OSD stopped mid-workload, the
//! monitor stopped and restarted. These tests stop daemons of the cluster the environment
//! names (started by `tests/ceph/cluster.sh`, whose directory is `DSFS_TEST_CEPH_DIR`), so they
//! live in their own test binary and run one at a time. The OSD test needs 3 OSDs and a pool of
//! size 3 (`cluster.sh start --osds 3`).

#![cfg(feature = "rados")]

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dsfs::backend::rados::{RadosOptions, RadosStore};
use dsfs::{Datastore, Key};

/// One fault at a time: they stop shared daemons.
static SERIAL: Mutex<()> = Mutex::new(());

struct Cluster {
    dir: PathBuf,
    conf: PathBuf,
    pool: String,
    id: String,
    osds: u32,
}

fn cluster() -> Option<Cluster> {
    let (Some(dir), Some(conf)) = (
        std::env::var_os("DSFS_TEST_CEPH_DIR"),
        std::env::var_os("DSFS_TEST_CEPH_CONF"),
    ) else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but DSFS_TEST_CEPH_DIR/CONF are not: the Ceph cluster did not start"
        );
        eprintln!("no Ceph cluster (DSFS_TEST_CEPH_DIR unset): skipping");
        return None;
    };
    Some(Cluster {
        dir: PathBuf::from(dir),
        conf: PathBuf::from(conf),
        pool: std::env::var("DSFS_TEST_CEPH_POOL").unwrap_or_else(|_| "dsfs".into()),
        id: std::env::var("DSFS_TEST_CEPH_ID").unwrap_or_else(|_| "dsfs".into()),
        osds: std::env::var("DSFS_TEST_CEPH_OSDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(1),
    })
}

impl Cluster {
    /// Runs `cluster.sh COMMAND DIR ARGS...`.
    fn run(&self, args: &[&str]) -> Result<(), String> {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/ceph/cluster.sh");
        let out = Command::new("bash")
            .arg(script)
            .arg(args[0])
            .arg(&self.dir)
            .args(&args[1..])
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    fn script(&self, args: &[&str]) {
        if let Err(e) = self.run(args) {
            panic!("cluster.sh {args:?}: {e}");
        }
    }

    fn store(&self, test: &str, timeout: Duration) -> RadosStore {
        RadosStore::open(self.options(test, timeout)).unwrap()
    }

    fn options(&self, test: &str, timeout: Duration) -> RadosOptions {
        RadosOptions {
            conf: self.conf.clone(),
            id: self.id.clone(),
            namespace: format!("{test}-{}", std::process::id()),
            timeout,
            ..RadosOptions::new(self.pool.clone())
        }
    }
}

fn value(i: u64) -> Vec<u8> {
    let len = if i.is_multiple_of(10) {
        300_000
    } else {
        1000 + i as usize
    };
    (0..len).map(|j| (i as usize * 31 + j) as u8).collect()
}

/// Restarts a stopped daemon even when the test fails half-way.
struct Restart<'a>(&'a Cluster, &'static str, Option<String>);

impl Drop for Restart<'_> {
    fn drop(&mut self) {
        let mut args = vec![self.1];
        if let Some(id) = &self.2 {
            args.push(id);
        }
        if let Err(e) = self.0.run(&args) {
            eprintln!("cluster.sh {args:?}: {e}");
        }
    }
}

#[test]
fn stopping_one_of_three_osds_mid_workload_loses_nothing_and_io_continues() {
    let Some(c) = cluster() else { return };
    if c.osds < 3 {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs the fault tests on 3 OSDs"
        );
        eprintln!(
            "the cluster has {} OSD(s); this test needs 3: skipping",
            c.osds
        );
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let store = Arc::new(c.store("osd-fault", Duration::from_secs(60)));
    let written = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (store, written, stop) = (store.clone(), written.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) || i < 200 {
                store.put(&Key::new(format!("/v/{i}")), &value(i)).unwrap();
                i += 1;
                written.store(i, Ordering::Release);
            }
        })
    };
    while written.load(Ordering::Acquire) < 50 {
        std::thread::sleep(Duration::from_millis(20));
    }
    c.script(&["stop-osd", "1"]);
    let restart = Restart(&c, "start-osd", Some("1".into()));
    let at_stop = written.load(Ordering::Acquire);
    // I/O continues with the OSD down: the writer makes progress.
    let deadline = Instant::now() + Duration::from_secs(120);
    while written.load(Ordering::Acquire) < at_stop + 50 {
        assert!(Instant::now() < deadline, "no progress with one OSD down");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(restart);
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let n = written.load(Ordering::Acquire);
    for i in 0..n {
        assert_eq!(
            store.get(&Key::new(format!("/v/{i}"))).unwrap(),
            value(i),
            "/v/{i}"
        );
    }
}

#[test]
fn with_the_monitor_stopped_operations_end_within_the_timeout_and_work_after_it_returns() {
    let Some(c) = cluster() else { return };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let timeout = Duration::from_secs(5);
    let store = c.store("mon-fault", timeout);
    store.put(&Key::new("/before"), b"v").unwrap();
    c.script(&["stop-mon"]);
    let restart = Restart(&c, "start-mon", None);
    // Data operations go to the OSDs, which keep serving; whatever they answer, they answer
    // (no hang). A new client needs the monitor: it fails within its timeout, in one line.
    // Hang checks, not speed checks: the bound is the 5 s timeout with the slack a loaded CI
    // machine (a debug build beside three OSDs) needs.
    let hang = timeout * 12;
    let began = Instant::now();
    let _ = store.get(&Key::new("/before"));
    let _ = store.put(&Key::new("/during"), b"v");
    assert!(began.elapsed() < hang, "{:?}", began.elapsed());
    let began = Instant::now();
    let err = RadosStore::open(c.options("mon-fault", timeout))
        .err()
        .unwrap();
    assert!(began.elapsed() < hang, "{:?}", began.elapsed());
    assert_eq!(err.kind(), dsfs::ErrorKind::TimedOut, "{err}");
    drop(restart);
    // Back: new clients connect and everything reads and writes again.
    let deadline = Instant::now() + Duration::from_secs(60);
    let again = loop {
        match RadosStore::open(c.options("mon-fault", timeout)) {
            Ok(s) => break s,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "the monitor did not come back: {e}"
                );
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    };
    again.put(&Key::new("/after"), b"v").unwrap();
    assert_eq!(again.get(&Key::new("/before")).unwrap(), b"v");
    assert_eq!(store.get(&Key::new("/after")).unwrap(), b"v");
}
