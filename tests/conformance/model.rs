//! A model-based property test: random sequences of operations run against a store and against
//! a `BTreeMap<String, Vec<u8>>`, which must agree after every step. Keys come from a small
//! alphabet with one to three components, so collisions and parent/child pairs are frequent.
//! `PROPTEST_CASES` raises the number of cases (never below 256); `PROPTEST_RNG_SEED` fixes the
//! seed to replay a run.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use dsfs::datastore::{Entry, Order};
use dsfs::{Datastore, Key, Query};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};

use crate::harness::{
    Case, Ctx, OrFail, TResult, check_bytes, expect_not_found, fail, key, keys_of, run_query,
};
use crate::stores::StoreFactory;

/// The trial `<store>::model`.
pub fn cases() -> Vec<Case> {
    vec![Case::new("model", model)]
}

/// One step of a sequence.
#[derive(Clone, Debug)]
enum Op {
    Put(String, Vec<u8>),
    Delete(String),
    Get(String),
    Has(String),
    GetSize(String),
    ReadAt(String, u64, usize),
    Query {
        prefix: String,
        limit: usize,
        offset: usize,
        keys_only: bool,
        /// 0: no order, 1: KEY, 2: desc(KEY).
        order: u8,
    },
    Batch(Vec<(String, Option<Vec<u8>>)>),
    Sync(String),
    /// Close, drop and reopen (persistent stores only).
    Reopen,
}

fn key_strategy() -> impl Strategy<Value = String> + Clone {
    prop::collection::vec(
        prop::sample::select(&["a", "b", "ab", "a-b", "c"][..]),
        1..=3,
    )
    .prop_map(|parts| format!("/{}", parts.join("/")))
}

fn value_strategy() -> impl Strategy<Value = Vec<u8>> + Clone {
    prop::collection::vec(any::<u8>(), 0..24)
}

fn prefix_strategy() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("/".to_string()),
        key_strategy(),
        key_strategy().prop_map(|k| format!("{k}/")),
        key_strategy().prop_map(|k| k[1..].to_string()),
    ]
}

fn op_strategy(persistent: bool) -> BoxedStrategy<Op> {
    let k = key_strategy;
    let basic = prop_oneof![
        5 => (k(), value_strategy()).prop_map(|(k, v)| Op::Put(k, v)),
        2 => k().prop_map(Op::Delete),
        2 => k().prop_map(Op::Get),
        1 => k().prop_map(Op::Has),
        1 => k().prop_map(Op::GetSize),
        1 => (k(), 0..30u64, 0..30usize).prop_map(|(k, o, n)| Op::ReadAt(k, o, n)),
        3 => (prefix_strategy(), 0..5usize, 0..5usize, any::<bool>(), 0..3u8).prop_map(
            |(prefix, limit, offset, keys_only, order)| Op::Query {
                prefix,
                limit,
                offset,
                keys_only,
                order
            }
        ),
        1 => prop::collection::vec((k(), prop::option::of(value_strategy())), 1..6)
            .prop_map(Op::Batch),
        1 => prefix_strategy().prop_map(|p| Op::Sync(p.trim_end_matches('/').to_string())),
    ];
    if persistent {
        prop_oneof![16 => basic, 1 => Just(Op::Reopen)].boxed()
    } else {
        basic.boxed()
    }
}

fn model(ctx: &mut Ctx) -> TResult {
    let persistent = ctx.caps().persistent;
    let factory = ctx.factory().clone();
    let base = ctx.dir().to_path_buf();
    let config = Config {
        // At least 256; `PROPTEST_CASES` may ask for more.
        cases: Config::default().cases.max(256),
        failure_persistence: None,
        ..Config::default()
    };
    let wanted = config.cases as usize;
    let mut runner = TestRunner::new(config);
    let strategy = prop::collection::vec(op_strategy(persistent), 1..40);
    let ran = AtomicUsize::new(0);
    let result = runner.run(&strategy, |ops| {
        ran.fetch_add(1, Ordering::Relaxed);
        let dir = tempfile::tempdir_in(&base)
            .map_err(|e| TestCaseError::fail(format!("temporary directory: {e}")))?;
        run_sequence(&factory, dir.path(), &ops)
            .map_err(|f| TestCaseError::fail(f.message().unwrap_or("failed").to_string()))
    });
    match result {
        Ok(()) => {
            let ran = ran.into_inner();
            ensure!(ran >= wanted, "only {ran} of {wanted} cases ran");
            Ok(())
        }
        Err(TestError::Fail(reason, ops)) => Err(fail(format!(
            "{reason}\nminimal failing sequence ({} steps):\n{ops:#?}",
            ops.len()
        ))),
        Err(TestError::Abort(reason)) => Err(fail(format!("proptest aborted: {reason}"))),
    }
}

/// The store side of one sequence, with its reopen logic.
struct Subject {
    factory: StoreFactory,
    dir: std::path::PathBuf,
    store: Option<Arc<dyn Datastore>>,
}

impl Subject {
    fn ds(&self) -> &dyn Datastore {
        self.store.as_deref().expect("open")
    }

    fn reopen(&mut self) -> TResult {
        let store = self.store.take().expect("open");
        store.close().or_fail("close before reopening")?;
        drop(store);
        self.store = Some((self.factory.open)(&self.dir).or_fail("reopen")?);
        Ok(())
    }
}

fn run_sequence(factory: &StoreFactory, dir: &std::path::Path, ops: &[Op]) -> TResult {
    let mut subject = Subject {
        factory: factory.clone(),
        dir: dir.to_path_buf(),
        store: Some((factory.open)(dir).or_fail("open")?),
    };
    let mut model: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for (step, op) in ops.iter().enumerate() {
        apply(&mut subject, &mut model, op).map_err(|f| {
            fail(format!(
                "step {step}, {op:?}: {}",
                f.message().unwrap_or("")
            ))
        })?;
    }
    check_everything(subject.ds(), &model).map_err(|f| {
        fail(format!(
            "after the last step: {}",
            f.message().unwrap_or("")
        ))
    })?;
    subject.ds().close().or_fail("close")
}

fn apply(subject: &mut Subject, model: &mut BTreeMap<String, Vec<u8>>, op: &Op) -> TResult {
    match op {
        Op::Put(k, v) => {
            subject.ds().put(&key(k), v).or_fail("put")?;
            model.insert(k.clone(), v.clone());
        }
        Op::Delete(k) => {
            subject.ds().delete(&key(k)).or_fail("delete")?;
            model.remove(k);
        }
        Op::Get(k) => match model.get(k) {
            Some(v) => check_bytes(&subject.ds().get(&key(k)).or_fail("get")?, v, "get")?,
            None => expect_not_found(subject.ds().get(&key(k)), "get")?,
        },
        Op::Has(k) => ensure_eq!(
            subject.ds().has(&key(k)).or_fail("has")?,
            model.contains_key(k),
            "has"
        ),
        Op::GetSize(k) => match model.get(k) {
            Some(v) => ensure_eq!(
                subject.ds().get_size(&key(k)).or_fail("get_size")?,
                v.len() as u64,
                "get_size"
            ),
            None => expect_not_found(subject.ds().get_size(&key(k)), "get_size")?,
        },
        Op::ReadAt(k, offset, len) => {
            let mut buf = vec![0u8; *len];
            let got = subject.ds().read_at(&key(k), *offset, &mut buf);
            match model.get(k) {
                Some(v) => {
                    let n = got.or_fail("read_at")?;
                    let start = (*offset as usize).min(v.len());
                    let want = &v[start..(start + len).min(v.len())];
                    check_bytes(&buf[..n], want, "read_at")?;
                }
                None => expect_not_found(got, "read_at")?,
            }
        }
        Op::Query {
            prefix,
            limit,
            offset,
            keys_only,
            order,
        } => {
            let q = Query {
                prefix: prefix.clone(),
                limit: *limit,
                offset: *offset,
                keys_only: *keys_only,
                orders: match order {
                    0 => vec![],
                    1 => vec![Order::Key],
                    _ => vec![Order::KeyDescending],
                },
                ..Query::default()
            };
            check_query(subject.ds(), model, q, *order)?;
        }
        Op::Batch(ops) => {
            let mut b = subject.ds().batch().or_fail("batch")?;
            for (k, v) in ops {
                match v {
                    Some(v) => b.put(key(k), v.clone()).or_fail("batch put")?,
                    None => b.delete(key(k)).or_fail("batch delete")?,
                }
            }
            b.commit().or_fail("batch commit")?;
            for (k, v) in ops {
                match v {
                    Some(v) => model.insert(k.clone(), v.clone()),
                    None => model.remove(k),
                };
            }
        }
        Op::Sync(p) => subject.ds().sync(&Key::new(p)).or_fail("sync")?,
        Op::Reopen => {
            subject.reopen()?;
            check_everything(subject.ds(), model)?;
        }
    }
    Ok(())
}

/// The model's answer to a prefix: strict children of the cleaned prefix, written here from
/// the generator's few prefix forms rather than with the library's key code.
fn model_matches(prefix: &str, k: &str) -> bool {
    let trimmed = prefix.trim_end_matches('/');
    if trimmed.is_empty() {
        return true;
    }
    let rooted = if trimmed.starts_with('/') {
        trimmed.to_string()
    } else {
        format!("/{trimmed}")
    };
    k.starts_with(&format!("{rooted}/"))
}

fn check_query(
    ds: &dyn Datastore,
    model: &BTreeMap<String, Vec<u8>>,
    q: Query,
    order: u8,
) -> TResult {
    let mut matching: Vec<(&String, &Vec<u8>)> = model
        .iter()
        .filter(|(k, _)| model_matches(&q.prefix, k))
        .collect();
    if order == 2 {
        matching.reverse();
    }
    let got = run_query(ds, q.clone())?;
    for e in &got {
        let Some(v) = model.get(e.key.as_str()) else {
            return Err(fail(format!(
                "{q} returned {}, which the model lacks",
                e.key
            )));
        };
        check_entry(e, v, q.keys_only)?;
    }
    let end = if q.limit == 0 { usize::MAX } else { q.limit };
    let want: Vec<String> = matching
        .iter()
        .skip(q.offset)
        .take(end)
        .map(|(k, _)| (*k).clone())
        .collect();
    let mut have = keys_of(&got);
    if order == 0 {
        // No order: which entries offset and limit drop is the store's choice.
        have.sort();
        let before = have.len();
        have.dedup();
        ensure_eq!(have.len(), before, "{q}: keys returned once each");
        if q.limit == 0 && q.offset == 0 {
            ensure_eq!(have, want, "{q}");
        } else {
            ensure_eq!(have.len(), want.len(), "{q}: result count");
            for k in &have {
                ensure!(
                    matching.iter().any(|(m, _)| *m == k),
                    "{q} returned {k}, which does not match"
                );
            }
        }
    } else {
        ensure_eq!(have, want, "{q}");
    }
    Ok(())
}

fn check_entry(e: &Entry, v: &[u8], keys_only: bool) -> TResult {
    if keys_only {
        ensure!(e.value.is_none(), "keys-only result {} has a value", e.key);
    } else {
        check_bytes(
            e.value
                .as_deref()
                .ok_or_else(|| fail(format!("{} has no value", e.key)))?,
            v,
            format!("queried value of {}", e.key),
        )?;
        ensure_eq!(e.size, Some(v.len() as u64), "size of {}", e.key);
    }
    if let Some(s) = e.size {
        ensure_eq!(s, v.len() as u64, "size of {}", e.key);
    }
    Ok(())
}

/// The whole store against the whole model.
fn check_everything(ds: &dyn Datastore, model: &BTreeMap<String, Vec<u8>>) -> TResult {
    let mut got = run_query(ds, Query::default())?;
    got.sort_by(|a, b| a.key.cmp(&b.key));
    let want: Vec<String> = model.keys().cloned().collect();
    ensure_eq!(keys_of(&got), want, "the store's keys");
    for e in &got {
        check_entry(e, &model[e.key.as_str()], false)?;
    }
    for (k, v) in model {
        check_bytes(&ds.get(&key(k)).or_fail("get")?, v, format!("get {k}"))?;
    }
    Ok(())
}
