//! The boundary between dsfs and redb for damaged files.
//!
//! redb trusts the pages it reads: a file altered by something other than redb (garbled bytes,
//! a bad disk, a hand edit) can make it panic ("internal error: entered unreachable code")
//! instead of returning an error. dsfs never panics on file content, so every call into redb
//! runs inside [`catch`], which turns such a panic into an ordinary error that the caller
//! reports as corruption. While a guarded call runs, the panic hook only logs at debug level:
//! the panic is an expected way for redb to say "corrupt", and a backtrace would be noise.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Once;

use redb::{ReadableDatabase, TableDefinition};

thread_local! {
    /// How many guarded calls are running on this thread.
    static GUARDED: Cell<u32> = const { Cell::new(0) };
}

static HOOK: Once = Once::new();

/// Installs (once per process) a panic hook that is quiet inside guarded calls and leaves
/// every other panic to the hook that was there before.
fn install_hook() {
    HOOK.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if GUARDED.with(|g| g.get()) > 0 {
                log::debug!("redb panicked (reported as corruption): {info}");
            } else {
                previous(info);
            }
        }));
    });
}

struct Depth;

impl Depth {
    fn enter() -> Depth {
        GUARDED.with(|g| g.set(g.get().saturating_add(1)));
        Depth
    }
}

impl Drop for Depth {
    fn drop(&mut self) {
        GUARDED.with(|g| g.set(g.get().saturating_sub(1)));
    }
}

/// Runs `f`; a panic inside it becomes `Err(corrupt(message))`, where `message` says what was
/// being done and what the panic said.
///
/// redb's state after such a panic is unknown, so callers treat the database as damaged: the
/// error kind they build is their layer's "corrupt".
pub fn catch<T, E>(
    what: &str,
    f: impl FnOnce() -> Result<T, E>,
    corrupt: impl FnOnce(String) -> E,
) -> Result<T, E> {
    install_hook();
    let result = {
        let _depth = Depth::enter();
        panic::catch_unwind(AssertUnwindSafe(f))
    };
    match result {
        Ok(r) => r,
        Err(payload) => {
            let said = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".to_owned());
            Err(corrupt(format!(
                "{what}: the database file is damaged ({said})"
            )))
        }
    }
}

/// Wraps an iterator over redb data: each step runs inside [`catch`], and a panic ends the
/// iteration after one `Err(corrupt(..))` item.
pub fn iter<I, T, E>(
    what: &'static str,
    it: I,
    corrupt: fn(String) -> E,
) -> impl Iterator<Item = Result<T, E>> + use<I, T, E>
where
    I: Iterator<Item = Result<T, E>>,
{
    let mut inner = Some(it);
    std::iter::from_fn(move || {
        let it = inner.as_mut()?;
        match catch(what, || Ok(it.next()), corrupt) {
            Ok(item) => item,
            Err(e) => {
                inner = None;
                Some(Err(e))
            }
        }
    })
}

/// Reads every readable record of `table` in `db` within `range`: forwards until the first
/// failure, then backwards from the end down to the last record read. Returns the records and
/// how many failures stopped a scan.
pub fn salvage_table<'r, K, V, KO, VO, KR>(
    db: &redb::ReadOnlyDatabase,
    table: TableDefinition<K, V>,
    range: impl std::ops::RangeBounds<KR> + Clone,
    decode: impl Fn(K::SelfType<'_>, V::SelfType<'_>) -> Option<(KO, VO)>,
) -> (BTreeMap<KO, VO>, u64)
where
    K: redb::Key + 'static,
    V: redb::Value + 'static,
    KO: Ord + Clone,
    KR: std::borrow::Borrow<K::SelfType<'r>> + 'r,
{
    let mut out = BTreeMap::new();
    let mut failures = 0u64;
    for backwards in [false, true] {
        let result: Result<bool, String> = catch(
            "salvaging a table",
            || {
                let txn = db.begin_read().map_err(|e| e.to_string())?;
                let t = txn.open_table(table).map_err(|e| e.to_string())?;
                let range = t.range::<KR>(range.clone()).map_err(|e| e.to_string())?;
                let mut step = |item: Result<
                    (redb::AccessGuard<'_, K>, redb::AccessGuard<'_, V>),
                    redb::StorageError,
                >|
                 -> Result<bool, String> {
                    let (k, v) = item.map_err(|e| e.to_string())?;
                    match decode(k.value(), v.value()) {
                        Some((ko, vo)) => {
                            // Meeting a record the forward scan read means the scans met.
                            if backwards && out.contains_key(&ko) {
                                return Ok(true);
                            }
                            out.insert(ko, vo);
                        }
                        None => failures += 1,
                    }
                    Ok(false)
                };
                if backwards {
                    for item in range.rev() {
                        if step(item)? {
                            return Ok(true);
                        }
                    }
                } else {
                    for item in range {
                        step(item)?;
                    }
                }
                Ok(true)
            },
            |m| m,
        );
        match result {
            // A complete forward scan leaves nothing for the backward one.
            Ok(_) if !backwards => return (out, failures),
            Ok(_) => {}
            Err(e) => {
                log::debug!("salvage: {e}");
                failures += 1;
            }
        }
    }
    (out, failures)
}

/// Whether a redb error means the file does not hold what redb wrote: reported corruption, or
/// a file that is not (or no longer) a redb database.
pub fn is_corruption(err: &redb::Error) -> bool {
    match err {
        redb::Error::Corrupted(_) => true,
        redb::Error::Io(io) => io.kind() == std::io::ErrorKind::InvalidData,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_inside_a_guarded_call_becomes_an_error() {
        let r: Result<u32, String> = catch("reading", || panic!("unreachable"), |m| m);
        let msg = r.unwrap_err();
        assert!(msg.contains("reading"), "{msg}");
        assert!(msg.contains("unreachable"), "{msg}");
    }

    #[test]
    fn a_guarded_call_that_returns_passes_its_result_through() {
        let ok: Result<u32, String> = catch("x", || Ok(7), |m| m);
        assert_eq!(ok, Ok(7));
        let err: Result<u32, String> = catch("x", || Err("plain".to_owned()), |m| m);
        assert_eq!(err, Err("plain".to_owned()));
    }
}
