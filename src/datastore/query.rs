//! Queries with go-datastore's semantics, and the naive engine every store can fall back on.
//!
//! Order of operations (go-datastore `NaiveQueryApply`): prefix (strict children), then each
//! filter, then the orders (hierarchical, with an ascending bytewise key tie-break), then offset,
//! then limit. Offset and limit therefore count filtered, sorted results.

use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;

use super::error::{Error, Result};
use super::key::Key;

/// One query result. `value` is `None` when the query was keys-only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The key, in clean form.
    pub key: Key,
    /// The value; `None` for keys-only queries.
    pub value: Option<Vec<u8>>,
    /// The value's length, when known. Always set when `value` is set, and when the query asked
    /// for sizes.
    pub size: Option<u64>,
}

impl Entry {
    /// An entry carrying a value (and therefore its size).
    pub fn with_value(key: Key, value: Vec<u8>) -> Entry {
        let size = Some(value.len() as u64);
        Entry {
            key,
            value: Some(value),
            size,
        }
    }

    /// A keys-only entry.
    pub fn key_only(key: Key, size: Option<u64>) -> Entry {
        Entry {
            key,
            value: None,
            size,
        }
    }

    /// The value bytes, or the empty slice for keys-only entries (what upstream's value
    /// filters and orders compare against in that case).
    pub fn value_bytes(&self) -> &[u8] {
        self.value.as_deref().unwrap_or(&[])
    }
}

/// A comparison operator for [`Filter::KeyCompare`] and [`Filter::ValueCompare`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `==`
    Equal,
    /// `!=`
    NotEqual,
    /// `>`
    GreaterThan,
    /// `>=`
    GreaterThanOrEqual,
    /// `<`
    LessThan,
    /// `<=`
    LessThanOrEqual,
}

impl Op {
    /// Whether `ord` (the entry compared with the operand) satisfies the operator.
    pub fn matches(self, ord: Ordering) -> bool {
        match self {
            Op::Equal => ord == Ordering::Equal,
            Op::NotEqual => ord != Ordering::Equal,
            Op::GreaterThan => ord == Ordering::Greater,
            Op::GreaterThanOrEqual => ord != Ordering::Less,
            Op::LessThan => ord == Ordering::Less,
            Op::LessThanOrEqual => ord != Ordering::Greater,
        }
    }

    /// The operator's symbol.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Equal => "==",
            Op::NotEqual => "!=",
            Op::GreaterThan => ">",
            Op::GreaterThanOrEqual => ">=",
            Op::LessThan => "<",
            Op::LessThanOrEqual => "<=",
        }
    }

    /// Parses a symbol; unknown operators are an error (upstream panics).
    pub fn parse(s: &str) -> Result<Op> {
        Ok(match s {
            "==" => Op::Equal,
            "!=" => Op::NotEqual,
            ">" => Op::GreaterThan,
            ">=" => Op::GreaterThanOrEqual,
            "<" => Op::LessThan,
            "<=" => Op::LessThanOrEqual,
            _ => {
                return Err(Error::new(
                    super::ErrorKind::InvalidArgument,
                    format!("unknown comparison operator {s:?}"),
                ));
            }
        })
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A user-supplied predicate, compared by identity.
#[derive(Clone)]
pub struct FilterFn(pub Arc<dyn Fn(&Entry) -> bool + Send + Sync>);

/// The function type behind an [`OrderFn`].
pub type OrderFnDyn = dyn Fn(&Entry, &Entry) -> Ordering + Send + Sync;

/// A user-supplied ordering, compared by identity.
#[derive(Clone)]
pub struct OrderFn(pub Arc<OrderFnDyn>);

/// A predicate on entries; an entry is kept when every filter of the query keeps it.
#[derive(Clone)]
pub enum Filter {
    /// Compares the entry's key with `key`, bytewise.
    KeyCompare {
        /// The operator.
        op: Op,
        /// The operand.
        key: String,
    },
    /// Compares the entry's value with `value`, bytewise (keys-only entries compare as empty).
    ValueCompare {
        /// The operator.
        op: Op,
        /// The operand.
        value: Vec<u8>,
    },
    /// A raw string-prefix test on the key, with no slash logic.
    KeyPrefix(String),
    /// Any user predicate.
    Custom(FilterFn),
}

impl Filter {
    /// Whether the filter keeps `entry`.
    pub fn keep(&self, entry: &Entry) -> bool {
        match self {
            Filter::KeyCompare { op, key } => op.matches(entry.key.as_bytes().cmp(key.as_bytes())),
            Filter::ValueCompare { op, value } => {
                op.matches(entry.value_bytes().cmp(value.as_slice()))
            }
            Filter::KeyPrefix(prefix) => entry.key.as_str().starts_with(prefix.as_str()),
            Filter::Custom(f) => (f.0)(entry),
        }
    }

    /// Wraps a closure as a [`Filter::Custom`].
    pub fn custom(f: impl Fn(&Entry) -> bool + Send + Sync + 'static) -> Filter {
        Filter::Custom(FilterFn(Arc::new(f)))
    }
}

impl PartialEq for Filter {
    fn eq(&self, other: &Filter) -> bool {
        match (self, other) {
            (Filter::KeyCompare { op: a, key: k }, Filter::KeyCompare { op: b, key: l }) => {
                a == b && k == l
            }
            (
                Filter::ValueCompare { op: a, value: v },
                Filter::ValueCompare { op: b, value: w },
            ) => a == b && v == w,
            (Filter::KeyPrefix(a), Filter::KeyPrefix(b)) => a == b,
            (Filter::Custom(a), Filter::Custom(b)) => Arc::ptr_eq(&a.0, &b.0),
            _ => false,
        }
    }
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Filter::KeyCompare { op, key } => write!(f, "KEY {op} {key:?}"),
            Filter::ValueCompare { op, value } => {
                write!(f, "VALUE {op} {:?}", String::from_utf8_lossy(value))
            }
            Filter::KeyPrefix(p) => write!(f, "PREFIX({p:?})"),
            Filter::Custom(_) => f.write_str("FILTER(fn)"),
        }
    }
}

impl fmt::Debug for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// One level of a hierarchical sort.
#[derive(Clone)]
pub enum Order {
    /// Ascending bytewise key (`KEY`).
    Key,
    /// Descending bytewise key (`desc(KEY)`).
    KeyDescending,
    /// Ascending bytewise value (`VALUE`).
    Value,
    /// Descending bytewise value (`desc(VALUE)`).
    ValueDescending,
    /// Any user ordering (`FN`).
    Function(OrderFn),
}

impl Order {
    /// Compares two entries by this order alone.
    pub fn compare(&self, a: &Entry, b: &Entry) -> Ordering {
        match self {
            Order::Key => a.key.as_bytes().cmp(b.key.as_bytes()),
            Order::KeyDescending => b.key.as_bytes().cmp(a.key.as_bytes()),
            Order::Value => a.value_bytes().cmp(b.value_bytes()),
            Order::ValueDescending => b.value_bytes().cmp(a.value_bytes()),
            Order::Function(f) => (f.0)(a, b),
        }
    }

    /// Wraps a closure as an [`Order::Function`].
    pub fn function(f: impl Fn(&Entry, &Entry) -> Ordering + Send + Sync + 'static) -> Order {
        Order::Function(OrderFn(Arc::new(f)))
    }
}

impl PartialEq for Order {
    fn eq(&self, other: &Order) -> bool {
        match (self, other) {
            (Order::Key, Order::Key)
            | (Order::KeyDescending, Order::KeyDescending)
            | (Order::Value, Order::Value)
            | (Order::ValueDescending, Order::ValueDescending) => true,
            (Order::Function(a), Order::Function(b)) => Arc::ptr_eq(&a.0, &b.0),
            _ => false,
        }
    }
}

impl fmt::Display for Order {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Order::Key => "KEY",
            Order::KeyDescending => "desc(KEY)",
            Order::Value => "VALUE",
            Order::ValueDescending => "desc(VALUE)",
            Order::Function(_) => "FN",
        })
    }
}

impl fmt::Debug for Order {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Hierarchical comparison: the first order that differs decides; ties go to the ascending
/// bytewise key, so the result is deterministic.
pub fn compare_entries(orders: &[Order], a: &Entry, b: &Entry) -> Ordering {
    for order in orders {
        match order.compare(a, b) {
            Ordering::Equal => {}
            ord => return ord,
        }
    }
    a.key.as_bytes().cmp(b.key.as_bytes())
}

/// A query. `limit == 0` means unlimited and `offset == 0` skips nothing, as upstream.
#[derive(Clone, Default, PartialEq)]
pub struct Query {
    /// Restricts results to strict descendants of the cleaned prefix; `""` or `/` mean all.
    pub prefix: String,
    /// Every filter must keep an entry.
    pub filters: Vec<Filter>,
    /// Hierarchical orders; empty means any order.
    pub orders: Vec<Order>,
    /// The maximum number of results; 0 is unlimited.
    pub limit: usize,
    /// How many results to skip; 0 skips none.
    pub offset: usize,
    /// Leave values out.
    pub keys_only: bool,
    /// Always fill `Entry::size`.
    pub returns_sizes: bool,
}

impl Query {
    /// A query for every key under `prefix` (strict children).
    pub fn prefix(prefix: impl Into<String>) -> Query {
        Query {
            prefix: prefix.into(),
            ..Query::default()
        }
    }

    /// The cleaned prefix key, or `None` when the query selects everything.
    pub fn prefix_key(&self) -> Option<Key> {
        if self.prefix.is_empty() {
            return None;
        }
        let k = Key::new(&self.prefix);
        if k.is_root() { None } else { Some(k) }
    }

    /// Whether `key` passes the prefix rule: a strict descendant of the cleaned prefix.
    pub fn prefix_matches(&self, key: &Key) -> bool {
        match self.prefix_key() {
            None => true,
            Some(p) => p.is_ancestor_of(key),
        }
    }

    /// Whether the query needs values to evaluate filters or orders, even if keys-only.
    pub fn needs_values(&self) -> bool {
        !self.keys_only
    }
}

impl fmt::Display for Query {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SELECT keys")?;
        if !self.keys_only {
            f.write_str(",vals")?;
        }
        if !self.prefix.is_empty() {
            write!(f, " FROM {:?}", self.prefix)?;
        }
        if !self.filters.is_empty() {
            let parts: Vec<String> = self.filters.iter().map(|x| x.to_string()).collect();
            write!(f, " FILTER [{}]", parts.join(", "))?;
        }
        if !self.orders.is_empty() {
            let parts: Vec<String> = self.orders.iter().map(|x| x.to_string()).collect();
            write!(f, " ORDER [{}]", parts.join(", "))?;
        }
        if self.offset > 0 {
            write!(f, " OFFSET {}", self.offset)?;
        }
        if self.limit > 0 {
            write!(f, " LIMIT {}", self.limit)?;
        }
        Ok(())
    }
}

impl fmt::Debug for Query {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Query({self})")
    }
}

/// A stream of query results. Dropping it (or calling [`Results::close`]) stops the producer
/// and releases whatever it held (a read transaction, a directory walk).
pub struct Results {
    query: Query,
    inner: Box<dyn Iterator<Item = Result<Entry>> + Send>,
}

impl Results {
    /// Wraps an iterator of results for `query`.
    pub fn new(
        query: Query,
        inner: impl Iterator<Item = Result<Entry>> + Send + 'static,
    ) -> Results {
        Results {
            query,
            inner: Box::new(inner),
        }
    }

    /// Results from a finished list of entries.
    pub fn from_entries(query: Query, entries: Vec<Entry>) -> Results {
        Results::new(query, entries.into_iter().map(Ok))
    }

    /// The query exactly as it was passed in.
    pub fn query(&self) -> &Query {
        &self.query
    }

    /// Drains every result, stopping at the first error.
    pub fn rest(self) -> Result<Vec<Entry>> {
        self.collect()
    }

    /// Stops early and releases the producer.
    pub fn close(self) {}
}

impl Iterator for Results {
    type Item = Result<Entry>;
    fn next(&mut self) -> Option<Result<Entry>> {
        self.inner.next()
    }
}

impl fmt::Debug for Results {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Results({})", self.query)
    }
}

/// The source a store hands to [`naive_apply`]: entries that already satisfy the prefix, or a
/// superset of them.
pub type EntryIter = Box<dyn Iterator<Item = Result<Entry>> + Send>;

/// Applies the whole query to `input` the way go-datastore's `NaiveQueryApply` does: prefix,
/// filters, orders, offset, limit. `sorted_by_key` says that `input` already comes in ascending
/// bytewise key order, which lets a `KEY` order stream instead of draining the input.
pub fn naive_apply(query: &Query, input: EntryIter, sorted_by_key: bool) -> EntryIter {
    let mut it: EntryIter = input;
    if let Some(prefix) = query.prefix_key() {
        it = Box::new(it.filter(move |r| match r {
            Ok(e) => prefix.is_ancestor_of(&e.key),
            Err(_) => true,
        }));
    }
    for filter in query.filters.clone() {
        it = Box::new(it.filter(move |r| match r {
            Ok(e) => filter.keep(e),
            Err(_) => true,
        }));
    }
    let already_ordered = sorted_by_key && matches!(query.orders.as_slice(), [Order::Key]);
    if !query.orders.is_empty() && !already_ordered {
        it = Box::new(naive_order(it, query.orders.clone()));
    }
    if query.offset > 0 {
        it = Box::new(NaiveOffset {
            inner: it,
            remaining: query.offset,
        });
    }
    if query.limit > 0 {
        it = Box::new(it.take(query.limit));
    }
    it
}

/// Drains `input`, sorts the entries by `orders`, and yields the errors first, as upstream.
fn naive_order(input: EntryIter, orders: Vec<Order>) -> impl Iterator<Item = Result<Entry>> + Send {
    let mut entries = Vec::new();
    let mut errors = Vec::new();
    for r in input {
        match r {
            Ok(e) => entries.push(e),
            Err(e) => errors.push(Err(e)),
        }
    }
    entries.sort_by(|a, b| compare_entries(&orders, a, b));
    errors.into_iter().chain(entries.into_iter().map(Ok))
}

/// Skips the first `remaining` successful results; an error met while skipping is passed on.
struct NaiveOffset {
    inner: EntryIter,
    remaining: usize,
}

impl Iterator for NaiveOffset {
    type Item = Result<Entry>;
    fn next(&mut self) -> Option<Result<Entry>> {
        while self.remaining > 0 {
            match self.inner.next()? {
                Ok(_) => self.remaining -= 1,
                Err(e) => return Some(Err(e)),
            }
        }
        self.inner.next()
    }
}

/// The half-open bytewise range `[P/, P0)` that holds exactly the strict descendants of the
/// prefix `P` in a byte-ordered store (`0` is the byte after `/`). `None` means the whole store.
pub fn prefix_range(prefix: Option<&Key>) -> Option<(String, String)> {
    let p = prefix?;
    if p.is_root() {
        return None;
    }
    Some((format!("{}/", p.as_str()), format!("{}0", p.as_str())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> Vec<Entry> {
        [
            "/ab/c", "/ab/cd", "/ab/ef", "/ab/fg", "/a", "/abce", "/abcf", "/ab",
        ]
        .iter()
        .map(|k| Entry::key_only(Key::new(k), None))
        .collect()
    }

    fn run(q: Query) -> Vec<String> {
        let it: EntryIter = Box::new(input().into_iter().map(Ok));
        naive_apply(&q, it, false)
            .map(|r| r.unwrap().key.into_string())
            .collect()
    }

    #[test]
    fn upstream_query_vectors() {
        let q = |f: &dyn Fn(&mut Query)| {
            let mut q = Query::default();
            f(&mut q);
            q
        };
        assert_eq!(run(q(&|q| q.limit = 2)), ["/ab/c", "/ab/cd"]);
        assert_eq!(
            run(q(&|q| {
                q.offset = 3;
                q.limit = 2
            })),
            ["/ab/fg", "/a"]
        );
        assert_eq!(
            run(q(&|q| q.filters = vec![Filter::KeyCompare {
                op: Op::Equal,
                key: "/ab".into()
            }])),
            ["/ab"]
        );
        assert_eq!(
            run(q(&|q| q.prefix = "/ab".into())),
            ["/ab/c", "/ab/cd", "/ab/ef", "/ab/fg"]
        );
        assert_eq!(
            run(q(&|q| q.orders = vec![Order::KeyDescending])),
            [
                "/abcf", "/abce", "/ab/fg", "/ab/ef", "/ab/cd", "/ab/c", "/ab", "/a"
            ]
        );
        assert_eq!(
            run(q(&|q| {
                q.limit = 2;
                q.offset = 1;
                q.prefix = "/ab".into();
                q.orders = vec![Order::Key]
            })),
            ["/ab/cd", "/ab/ef"]
        );
        assert_eq!(
            run(q(&|q| q.orders = vec![Order::Key])),
            [
                "/a", "/ab", "/ab/c", "/ab/cd", "/ab/ef", "/ab/fg", "/abce", "/abcf"
            ]
        );
        assert_eq!(
            run(q(&|q| q.filters = vec![Filter::KeyCompare {
                op: Op::GreaterThan,
                key: "/ab".into()
            }]))
            .len(),
            6
        );
        let mut le = run(q(&|q| {
            q.filters = vec![Filter::KeyCompare {
                op: Op::LessThanOrEqual,
                key: "/ab".into(),
            }]
        }));
        le.sort();
        assert_eq!(le, ["/a", "/ab"]);
        assert_eq!(
            run(q(&|q| q.filters = vec![Filter::KeyPrefix("/a".into())])).len(),
            8
        );
        assert_eq!(
            run(q(&|q| q.filters = vec![Filter::KeyPrefix("/ab/".into())])).len(),
            4
        );
        assert!(run(q(&|q| q.offset = 10)).is_empty());
        assert_eq!(run(q(&|q| q.limit = 10)).len(), 8);
    }

    #[test]
    fn prefixes_that_mean_everything() {
        for p in ["", "/", "/./", "/.././/", "/prefix/../"] {
            assert!(Query::prefix(p).prefix_key().is_none(), "{p}");
        }
        assert_eq!(
            Query::prefix("/prefix/").prefix_key().unwrap().as_str(),
            "/prefix"
        );
        assert_eq!(Query::prefix("foo").prefix_key().unwrap().as_str(), "/foo");
    }

    #[test]
    fn prefix_selects_strict_children_only() {
        let q = Query::prefix("/foo");
        assert!(q.prefix_matches(&Key::new("/foo/bar")));
        assert!(!q.prefix_matches(&Key::new("/foobar")));
        assert!(!q.prefix_matches(&Key::new("/foo")));
    }

    #[test]
    fn query_string_form() {
        let q = Query {
            prefix: "/foo".into(),
            filters: vec![Filter::KeyCompare {
                op: Op::GreaterThan,
                key: "/foo/bar".into(),
            }],
            orders: vec![Order::Value, Order::Key],
            offset: 10,
            limit: 10,
            ..Query::default()
        };
        assert_eq!(
            q.to_string(),
            r#"SELECT keys,vals FROM "/foo" FILTER [KEY > "/foo/bar"] ORDER [VALUE, KEY] OFFSET 10 LIMIT 10"#
        );
        let k = Query {
            keys_only: true,
            ..Query::default()
        };
        assert_eq!(k.to_string(), "SELECT keys");
    }

    #[test]
    fn offset_passes_errors_and_limit_counts_them() {
        let items: Vec<Result<Entry>> = vec![
            Ok(Entry::key_only(Key::new("/a"), None)),
            Err(Error::new(super::super::ErrorKind::Io, "boom")),
            Ok(Entry::key_only(Key::new("/b"), None)),
            Ok(Entry::key_only(Key::new("/c"), None)),
        ];
        let q = Query {
            offset: 2,
            ..Query::default()
        };
        let out: Vec<_> = naive_apply(&q, Box::new(items.into_iter()), false).collect();
        assert!(out[0].is_err());
        assert_eq!(out[1].as_ref().unwrap().key.as_str(), "/c");
    }

    #[test]
    fn ordering_breaks_ties_by_ascending_key() {
        let mk = |k: &str, v: &[u8]| Entry::with_value(Key::new(k), v.to_vec());
        let items = vec![mk("/b", b"x"), mk("/a", b"x"), mk("/c", b"a")];
        let q = Query {
            orders: vec![Order::Value],
            ..Query::default()
        };
        let out: Vec<String> = naive_apply(&q, Box::new(items.into_iter().map(Ok)), false)
            .map(|r| r.unwrap().key.into_string())
            .collect();
        assert_eq!(out, ["/c", "/a", "/b"]);
    }

    #[test]
    fn prefix_range_brackets_exactly_the_children() {
        let (lo, hi) = prefix_range(Some(&Key::new("/a"))).unwrap();
        for (k, inside) in [
            ("/a", false),
            ("/a-b", false),
            ("/a/", true),
            ("/a/x", true),
            ("/a0", false),
            ("/a/\u{10FFFF}", true),
        ] {
            assert_eq!(k >= lo.as_str() && k < hi.as_str(), inside, "{k}");
        }
        assert!(prefix_range(None).is_none());
        assert!(prefix_range(Some(&Key::root())).is_none());
    }
}
