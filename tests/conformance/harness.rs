//! The machinery shared by every case: the per-trial context, capability gating, clean-up
//! between trials, and small assertion helpers that report where they failed.

use std::fmt::{self, Display};
use std::panic::Location;
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use dsfs::datastore::{Capabilities, Entry};
use dsfs::{Datastore, ErrorKind, Key, Query};
use libtest_mimic::{Completion, Failed, Trial};
use rand::RngCore;

use crate::stores::StoreFactory;

/// What a case returns.
pub type TResult<T = ()> = Result<T, Failed>;

/// A failure message that names the line of the caller.
#[track_caller]
pub fn fail(msg: impl Display) -> Failed {
    let loc = Location::caller();
    Failed::from(format!("{}:{}: {msg}", loc.file(), loc.line()))
}

/// Fails the case with a formatted message unless the condition holds.
macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err($crate::harness::fail(format!($($fmt)+)));
        }
    };
}

/// Fails the case unless both sides are equal, showing both.
macro_rules! ensure_eq {
    ($left:expr, $right:expr, $($fmt:tt)+) => {
        match (&$left, &$right) {
            (l, r) => {
                if l != r {
                    return Err($crate::harness::fail(format!(
                        "{}: {:?} != {:?}",
                        format!($($fmt)+),
                        l,
                        r
                    )));
                }
            }
        }
    };
}

/// Turns a store error into a failure that says what was being done and where.
pub trait OrFail<T> {
    /// `Ok` passes through; an error becomes a failure naming `what` and the caller's line.
    fn or_fail(self, what: impl Display) -> TResult<T>;
}

impl<T> OrFail<T> for dsfs::Result<T> {
    #[track_caller]
    fn or_fail(self, what: impl Display) -> TResult<T> {
        let loc = Location::caller();
        self.map_err(|e| {
            Failed::from(format!(
                "{}:{}: {what}: unexpected error {e:?}",
                loc.file(),
                loc.line()
            ))
        })
    }
}

/// Requires `result` to fail with exactly [`ErrorKind::NotFound`].
#[track_caller]
pub fn expect_not_found<T: fmt::Debug>(result: dsfs::Result<T>, what: impl Display) -> TResult {
    expect_kind(result, ErrorKind::NotFound, what)
}

/// Requires `result` to fail with exactly `kind`.
#[track_caller]
pub fn expect_kind<T: fmt::Debug>(
    result: dsfs::Result<T>,
    kind: ErrorKind,
    what: impl Display,
) -> TResult {
    match result {
        Err(e) if e.kind() == kind => Ok(()),
        Err(e) => Err(fail(format!("{what}: expected {kind:?}, got error {e:?}"))),
        Ok(v) => {
            let mut shown = format!("{v:?}");
            if shown.len() > 200 {
                shown.truncate(200);
                shown.push('…');
            }
            Err(fail(format!("{what}: expected {kind:?}, got Ok({shown})")))
        }
    }
}

/// Compares two byte strings, reporting lengths and the first difference rather than dumping
/// both (values run to megabytes).
#[track_caller]
pub fn check_bytes(actual: &[u8], expected: &[u8], what: impl Display) -> TResult {
    if actual == expected {
        return Ok(());
    }
    let first = actual
        .iter()
        .zip(expected)
        .position(|(a, b)| a != b)
        .unwrap_or(actual.len().min(expected.len()));
    Err(fail(format!(
        "{what}: bytes differ: got {} bytes, expected {}, first difference at offset {first}",
        actual.len(),
        expected.len()
    )))
}

/// `n` random bytes.
/// `len`, or the store's largest value size when that is smaller.
pub fn fit(ds: &dyn Datastore, len: usize) -> usize {
    ds.capabilities().max_value_size.map_or(len, |max| {
        len.min(usize::try_from(max).unwrap_or(usize::MAX))
    })
}

pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rand::rng().fill_bytes(&mut v);
    v
}

/// A clean key from a string that must already be clean (go-datastore's `RawKey`).
#[track_caller]
pub fn key(s: &str) -> Key {
    match Key::from_raw(s) {
        Ok(k) => k,
        Err(e) => panic!("test bug: {s:?} is not a clean key: {e}"),
    }
}

/// Runs a query and drains it, checking that the results carry the query as passed in.
#[track_caller]
pub fn run_query(ds: &dyn Datastore, q: Query) -> TResult<Vec<Entry>> {
    let loc = Location::caller();
    let at = format!("{}:{}", loc.file(), loc.line());
    let results = ds
        .query(q.clone())
        .map_err(|e| Failed::from(format!("{at}: query {q}: {e:?}")))?;
    if results.query() != &q {
        return Err(Failed::from(format!(
            "{at}: results carry {}, not the query passed in ({})",
            describe(results.query()),
            describe(&q)
        )));
    }
    results
        .rest()
        .map_err(|e| Failed::from(format!("{at}: draining query {q}: {e:?}")))
}

/// A query with every field shown (its `Display` leaves out `returns_sizes`, and custom
/// filters and orders compare by identity).
pub fn describe(q: &Query) -> String {
    format!(
        "{q} [prefix {:?}, keys_only {}, returns_sizes {}, offset {}, limit {}, filters {:?}, orders {:?}]",
        q.prefix, q.keys_only, q.returns_sizes, q.offset, q.limit, q.filters, q.orders
    )
}

/// The keys of every entry, in order.
pub fn keys_of(entries: &[Entry]) -> Vec<String> {
    entries.iter().map(|e| e.key.as_str().to_owned()).collect()
}

/// Runs `f` on another thread and fails if it does not finish within `limit` (a deadlock
/// detector, not a speed threshold: the limits are generous). A hung thread is leaked.
#[track_caller]
pub fn within<T: Send + 'static>(
    limit: Duration,
    what: &str,
    f: impl FnOnce() -> TResult<T> + Send + 'static,
) -> TResult<T> {
    let loc = Location::caller();
    let at = format!("{}:{}", loc.file(), loc.line());
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name(format!("conformance-{what}"))
        .spawn(move || {
            let _ = tx.send(f());
        })
        .map_err(|e| fail(format!("spawning a thread: {e}")))?;
    match rx.recv_timeout(limit) {
        Ok(r) => r,
        Err(mpsc::RecvTimeoutError::Timeout) => Err(Failed::from(format!(
            "{at}: {what} did not finish within {limit:?}: the store looks deadlocked"
        ))),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            Err(Failed::from(format!("{at}: {what} panicked")))
        }
    }
}

/// A capability a case needs. A store whose capabilities rule the case out gets it reported as
/// ignored, never passed.
#[derive(Clone, Copy, Debug)]
pub enum Req {
    /// Any clean key (lower case, many components, any characters).
    GeneralKeys,
    /// Values survive closing and reopening.
    Persistent,
    /// Unordered queries come back in ascending bytewise key order.
    OrderedScan,
    /// A put is seen whole or not at all.
    AtomicPut,
    /// A batch is seen whole or not at all.
    AtomicBatch,
    /// Values of at least this many bytes are accepted.
    ValueSize(u64),
}

impl Req {
    /// Why `caps` rules the case out, if it does.
    pub fn unmet(self, caps: &Capabilities) -> Option<String> {
        let ok = match self {
            Req::GeneralKeys => caps.general_keys,
            Req::Persistent => caps.persistent,
            Req::OrderedScan => caps.ordered_scan,
            Req::AtomicPut => caps.atomic_put,
            Req::AtomicBatch => caps.atomic_batch,
            Req::ValueSize(n) => caps.max_value_size.is_none_or(|max| max >= n),
        };
        if ok {
            None
        } else {
            Some(match self {
                Req::ValueSize(n) => format!("store does not accept {n}-byte values"),
                other => format!("store does not claim {other:?}"),
            })
        }
    }
}

/// The body of a case.
pub type Body = Box<dyn FnOnce(&mut Ctx) -> TResult + Send>;

/// One case of the suite, to be run against every store.
pub struct Case {
    /// The case's name, the part after `<store>::`.
    pub name: String,
    /// What the store must claim for the case to apply.
    pub requires: Vec<Req>,
    /// The test itself.
    pub body: Body,
}

impl Case {
    /// A case that needs general keys (every case that uses go-datastore's usual keys).
    pub fn new(
        name: impl Into<String>,
        body: impl FnOnce(&mut Ctx) -> TResult + Send + 'static,
    ) -> Case {
        Case {
            name: name.into(),
            requires: vec![Req::GeneralKeys],
            body: Box::new(body),
        }
    }

    /// Adds a requirement.
    pub fn requires(mut self, req: Req) -> Case {
        self.requires.push(req);
        self
    }

    fn unmet(&self, caps: &Capabilities) -> Option<String> {
        self.requires.iter().find_map(|r| r.unmet(caps))
    }
}

/// The state of one trial: its store and the directory the store lives in.
pub struct Ctx {
    factory: StoreFactory,
    store: Option<Arc<dyn Datastore>>,
    // Declared last so that the store is dropped before its directory is removed.
    dir: tempfile::TempDir,
}

impl Ctx {
    /// Opens a store of `factory` in a fresh temporary directory.
    pub fn open(factory: StoreFactory) -> TResult<Ctx> {
        let dir = tempfile::Builder::new()
            .prefix("dsfs-conformance-")
            .tempdir()
            .map_err(|e| fail(format!("creating a temporary directory: {e}")))?;
        let store = (factory.open)(dir.path()).or_fail(format!("opening {}", factory.name))?;
        Ok(Ctx {
            factory,
            store: Some(store),
            dir,
        })
    }

    /// The store.
    pub fn ds(&self) -> &dyn Datastore {
        self.store.as_deref().expect("the store is open")
    }

    /// Another handle on the store, for threads. Drop it before [`Ctx::reopen`].
    pub fn shared(&self) -> Arc<dyn Datastore> {
        self.store.clone().expect("the store is open")
    }

    /// The store's capabilities.
    pub fn caps(&self) -> Capabilities {
        self.ds().capabilities()
    }

    /// The trial's directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The factory the store came from.
    pub fn factory(&self) -> &StoreFactory {
        &self.factory
    }

    /// Closes the store, drops it and opens it again from the same directory.
    pub fn reopen(&mut self) -> TResult {
        self.ds().close().or_fail("close before reopening")?;
        self.drop_and_open()
    }

    /// Drops the store without closing it, then opens it again from the same directory.
    pub fn drop_and_open(&mut self) -> TResult {
        let store = self.store.take().expect("the store is open");
        let handles = Arc::strong_count(&store);
        ensure!(
            handles == 1,
            "test bug: {} other handles on the store are still alive",
            handles - 1
        );
        drop(store);
        self.store = Some((self.factory.open)(self.dir.path()).or_fail("reopening the store")?);
        Ok(())
    }
}

/// go-datastore's `clearDs`: a keys-only query over everything, then a delete of each key.
/// Afterwards the store must be empty.
pub fn clear_ds(ds: &dyn Datastore) -> TResult {
    let q = Query {
        keys_only: true,
        ..Query::default()
    };
    let entries = run_query(ds, q.clone())?;
    for e in &entries {
        ds.delete(&e.key)
            .or_fail(format!("clearing the store: delete {}", e.key))?;
    }
    let left = run_query(ds, q)?;
    ensure!(
        left.is_empty(),
        "the store is not empty after deleting every key a full query returned; left: {:?}",
        keys_of(&left)
    );
    for e in &entries {
        ensure!(
            !ds.has(&e.key).or_fail("has after clearing")?,
            "{} is still there after being deleted",
            e.key
        );
    }
    Ok(())
}

/// Opens a throwaway store to learn what it claims. `None` if it cannot be opened, in which
/// case no trial is ignored and each reports the open failure itself.
pub fn probe_capabilities(factory: &StoreFactory) -> Option<Capabilities> {
    let ctx = Ctx::open(factory.clone()).ok()?;
    let caps = ctx.caps();
    let _ = ctx.ds().close();
    Some(caps)
}

/// The trial `<store>::<case>`: ignored when the store's probed capabilities rule the case
/// out; otherwise it opens a fresh store, runs the case, and clears the store.
pub fn trial(factory: &StoreFactory, caps: Option<Capabilities>, case: Case) -> Trial {
    let name = format!("{}::{}", factory.name, case.name);
    let ruled_out = caps.as_ref().and_then(|c| case.unmet(c)).is_some();
    let factory = factory.clone();
    Trial::ignorable_test(name, move || run_case(factory, case)).with_ignored_flag(ruled_out)
}

/// Why each case is ignored for a store, for the report printed before the run.
pub fn ignored_reasons(caps: &Capabilities, cases: &[Case]) -> Vec<(String, String)> {
    cases
        .iter()
        .filter_map(|c| c.unmet(caps).map(|r| (c.name.clone(), r)))
        .collect()
}

fn run_case(factory: StoreFactory, case: Case) -> TResult<Completion> {
    let mut ctx = Ctx::open(factory)?;
    // Checked again here: `--include-ignored` runs ignored trials, and they must not pass.
    if let Some(reason) = case.unmet(&ctx.caps()) {
        let _ = ctx.ds().close();
        return Ok(Completion::ignored_with(reason));
    }
    (case.body)(&mut ctx)?;
    clear_ds(ctx.ds())?;
    ctx.ds()
        .close()
        .or_fail("closing the store at the end of the trial")?;
    Ok(Completion::Completed)
}
