use std::sync::Arc;

use super::reconcile::{self, Drift};
use super::*;
use crate::backend::MemStore;
use crate::datastore::{Datastore, Query};

fn mem_index() -> Index {
    Index::in_memory(IndexOptions::default()).unwrap()
}

fn k(s: &str) -> Key {
    Key::new(s)
}

fn names(index: &Index, dir: NodeId) -> Vec<String> {
    let mut v: Vec<String> = index
        .list(dir, 0, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    v.sort();
    v
}

#[test]
fn a_put_creates_implied_directories_and_a_file() {
    let ix = mem_index();
    ix.record_put(&k("/a/b/c"), 5).unwrap();
    assert_eq!(names(&ix, ROOT), ["a"]);
    let (a, an) = ix.resolve(&k("/a")).unwrap().unwrap();
    assert_eq!(an.kind, NodeKind::Dir);
    assert!(!an.explicit);
    let (c, cn) = ix.resolve(&k("/a/b/c")).unwrap().unwrap();
    assert_eq!(cn.kind, NodeKind::File);
    assert_eq!(cn.size(), 5);
    assert_eq!(ix.key_of(c).unwrap(), k("/a/b/c"));
    assert_eq!(ix.key_of(a).unwrap(), k("/a"));
    assert_eq!(ix.value_size(&k("/a/b/c")).unwrap(), Some(5));
    assert_eq!(ix.value_size(&k("/a/b")).unwrap(), None);
    assert_eq!(ix.node(ROOT).unwrap().nlink(), 3);
}

#[test]
fn deleting_the_last_key_removes_implied_directories_but_not_explicit_ones() {
    let ix = mem_index();
    ix.record_put(&k("/a/b/c"), 1).unwrap();
    ix.write(|tx| {
        let mut n = Node::new(NodeKind::Dir, ROOT, "keep", 0o755, 0, 0);
        n.explicit = true;
        tx.create(ROOT, "keep", n)
    })
    .unwrap();
    ix.record_put(&k("/keep/x"), 1).unwrap();
    assert!(ix.record_delete(&k("/a/b/c")).unwrap());
    assert!(ix.record_delete(&k("/keep/x")).unwrap());
    assert_eq!(names(&ix, ROOT), ["keep"]);
    assert!(!ix.record_delete(&k("/nothing")).unwrap());
    assert_eq!(ix.node(ROOT).unwrap().nlink(), 3);
}

#[test]
fn a_key_with_a_value_and_children_keeps_both() {
    let ix = mem_index();
    ix.record_put(&k("/prefix"), 3).unwrap();
    ix.record_put(&k("/prefix/sub"), 4).unwrap();
    let (id, n) = ix.resolve(&k("/prefix")).unwrap().unwrap();
    assert_eq!(n.kind, NodeKind::Dir);
    assert_eq!(n.value, Some(3));
    assert_eq!(ix.value_size(&k("/prefix")).unwrap(), Some(3));
    assert_eq!(names(&ix, id), ["sub"]);
    // Removing the child turns it back into a plain file with its value.
    ix.record_delete(&k("/prefix/sub")).unwrap();
    let (_, n) = ix.resolve(&k("/prefix")).unwrap().unwrap();
    assert_eq!(n.kind, NodeKind::File);
    assert_eq!(n.size(), 3);
    // The other way round: remove the value, keep the child.
    ix.record_put(&k("/prefix/sub"), 4).unwrap();
    ix.record_delete(&k("/prefix")).unwrap();
    let (_, n) = ix.resolve(&k("/prefix")).unwrap().unwrap();
    assert_eq!(n.kind, NodeKind::Dir);
    assert_eq!(n.value, None);
    assert_eq!(ix.value_size(&k("/prefix/sub")).unwrap(), Some(4));
}

#[test]
fn a_value_at_the_root_key_is_kept_on_the_root() {
    let ix = mem_index();
    ix.record_put(&Key::root(), 2).unwrap();
    assert_eq!(ix.value_size(&Key::root()).unwrap(), Some(2));
    assert_eq!(ix.node(ROOT).unwrap().value, Some(2));
    ix.record_delete(&Key::root()).unwrap();
    assert_eq!(ix.node(ROOT).unwrap().value, None);
}

#[test]
fn listing_resumes_after_removals_without_skipping() {
    let ix = mem_index();
    for i in 0..100 {
        ix.record_put(&k(&format!("/d/f{i:03}")), 1).unwrap();
    }
    let (d, _) = ix.resolve(&k("/d")).unwrap().unwrap();
    let mut seen = Vec::new();
    let mut cookie = 0;
    loop {
        let page = ix.list(d, cookie, 7).unwrap();
        if page.is_empty() {
            break;
        }
        for e in &page {
            seen.push(e.name.clone());
            // Delete as we go, the way `rm -rf` does between readdir calls.
            ix.record_delete(&k(&format!("/d/{}", e.name))).unwrap();
        }
        cookie = page.last().unwrap().cookie;
        if ix.resolve(&k("/d")).unwrap().is_none() {
            break;
        }
    }
    seen.sort();
    let want: Vec<String> = (0..100).map(|i| format!("f{i:03}")).collect();
    assert_eq!(seen, want);
}

#[test]
fn prefix_key_scans_select_strict_children_in_byte_order() {
    let ix = mem_index();
    for key in ["/a", "/a-b", "/a/x", "/a/y/z", "/ab", "/b"] {
        ix.record_put(&k(key), 1).unwrap();
    }
    let got: Vec<String> = ix
        .keys(Some(&k("/a")))
        .unwrap()
        .map(|e| e.unwrap().key.into_string())
        .collect();
    assert_eq!(got, ["/a/x", "/a/y/z"]);
    let all: Vec<String> = ix
        .keys(None)
        .unwrap()
        .map(|e| e.unwrap().key.into_string())
        .collect();
    assert_eq!(all, ["/a", "/a-b", "/a/x", "/a/y/z", "/ab", "/b"]);
    assert_eq!(ix.key_count().unwrap(), 6);
}

#[test]
fn a_value_below_a_symlink_replaces_it_with_a_directory() {
    let ix = mem_index();
    ix.write(|tx| {
        let mut n = Node::new(NodeKind::Symlink, ROOT, "l", 0o777, 0, 0);
        n.target = b"elsewhere".to_vec();
        tx.create(ROOT, "l", n)
    })
    .unwrap();
    ix.record_put(&k("/l/x"), 1).unwrap();
    assert_eq!(ix.resolve(&k("/l")).unwrap().unwrap().1.kind, NodeKind::Dir);
}

#[test]
fn xattrs_are_stored_and_removed_with_their_node() {
    let ix = mem_index();
    let id = ix.record_put(&k("/f"), 1).unwrap();
    ix.write(|tx| tx.set_xattr(id, "user.a", Some(b"1")))
        .unwrap();
    ix.write(|tx| tx.set_xattr(id, "user.b", Some(b"2")))
        .unwrap();
    assert_eq!(ix.xattr(id, "user.a").unwrap().as_deref(), Some(&b"1"[..]));
    assert_eq!(ix.xattr_names(id).unwrap(), ["user.a", "user.b"]);
    ix.record_delete(&k("/f")).unwrap();
    assert!(ix.xattr_names(id).unwrap().is_empty());
}

#[test]
fn the_index_persists_and_detects_an_unclean_stop() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("index.redb");
    {
        let ix = Index::open(&path, IndexOptions::default()).unwrap();
        assert!(!ix.was_unclean());
        ix.record_put(&k("/a/b"), 9).unwrap();
        ix.sync().unwrap();
        // Dropped without close: the next open must notice.
    }
    {
        let ix = Index::open(&path, IndexOptions::default()).unwrap();
        assert!(ix.was_unclean());
        assert_eq!(ix.value_size(&k("/a/b")).unwrap(), Some(9));
        // Closed without reconciling with the store (a plain fsck): still unclean.
        ix.close().unwrap();
    }
    {
        let ix = Index::open(&path, IndexOptions::default()).unwrap();
        assert!(ix.was_unclean());
        ix.mark_reconciled();
        ix.close().unwrap();
    }
    let ix = Index::open(&path, IndexOptions::default()).unwrap();
    assert!(!ix.was_unclean());
}

#[test]
fn a_second_open_of_one_index_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("index.redb");
    let _ix = Index::open(&path, IndexOptions::default()).unwrap();
    let err = Index::open(&path, IndexOptions::default()).err().unwrap();
    assert_eq!(err.kind(), IndexErrorKind::Locked);
}

#[test]
fn check_finds_and_repairs_every_kind_of_drift() {
    let ix = Arc::new(mem_index());
    let store = Arc::new(MemStore::new());
    let indexed = IndexedStore::new(store.clone(), ix.clone());
    for i in 0..50 {
        indexed.put(&k(&format!("/k/{i:02}")), b"value").unwrap();
    }
    // Drift: a value behind the index's back, a listed key whose value vanished, a size change.
    store.put(&k("/k/unlisted"), b"x").unwrap();
    store.delete(&k("/k/07")).unwrap();
    store.put(&k("/k/08"), b"longer value").unwrap();
    let report = reconcile::check(&ix, store.as_ref(), false, &mut |_| {}).unwrap();
    assert_eq!(
        (report.unlisted, report.dangling, report.wrong_size),
        (1, 1, 1)
    );
    assert!(
        report
            .examples
            .contains(&(Drift::Unlisted, k("/k/unlisted")))
    );
    assert!(report.examples.contains(&(Drift::Dangling, k("/k/07"))));
    assert!(report.examples.contains(&(Drift::WrongSize, k("/k/08"))));
    // Without repair nothing changed.
    assert_eq!(ix.value_size(&k("/k/07")).unwrap(), Some(5));
    let fixed = reconcile::check(&ix, store.as_ref(), true, &mut |_| {}).unwrap();
    assert!(!fixed.is_consistent());
    let again = reconcile::check(&ix, store.as_ref(), false, &mut |_| {}).unwrap();
    assert!(again.is_consistent(), "{}", again.summary());
    assert_eq!(ix.value_size(&k("/k/08")).unwrap(), Some(12));
    assert_eq!(ix.value_size(&k("/k/07")).unwrap(), None);
}

#[test]
fn reindex_rebuilds_from_the_store() {
    let ix = mem_index();
    let store = MemStore::new();
    for i in 0..30 {
        store.put(&k(&format!("/r/{i}")), &[0u8; 3]).unwrap();
    }
    ix.record_put(&k("/stale"), 1).unwrap();
    let n = reconcile::reindex(&ix, &store, &mut |_| {}).unwrap();
    assert_eq!(n, 30);
    assert_eq!(ix.key_count().unwrap(), 30);
    assert!(ix.resolve(&k("/stale")).unwrap().is_none());
    assert!(
        reconcile::check(&ix, &store, false, &mut |_| {})
            .unwrap()
            .is_consistent()
    );
}

/// A backend that fails the test if it is asked for anything: proves that listings, lookups
/// and keys-only queries are answered by the index alone.
struct Untouchable;

impl Datastore for Untouchable {
    fn get(&self, key: &Key) -> crate::Result<Vec<u8>> {
        panic!("backend get({key})")
    }
    fn has(&self, key: &Key) -> crate::Result<bool> {
        panic!("backend has({key})")
    }
    fn get_size(&self, key: &Key) -> crate::Result<u64> {
        panic!("backend get_size({key})")
    }
    fn put(&self, _: &Key, _: &[u8]) -> crate::Result<()> {
        Ok(())
    }
    fn delete(&self, _: &Key) -> crate::Result<()> {
        Ok(())
    }
    fn query(&self, _: Query) -> crate::Result<crate::datastore::Results> {
        panic!("backend query")
    }
    fn sync(&self, _: &Key) -> crate::Result<()> {
        Ok(())
    }
    fn close(&self) -> crate::Result<()> {
        Ok(())
    }
    fn capabilities(&self) -> crate::datastore::Capabilities {
        crate::datastore::Capabilities::memory()
    }
}

#[test]
fn a_directory_of_100k_keys_is_listed_and_searched_without_the_backend() {
    let ix = Arc::new(mem_index());
    let store = IndexedStore::new(Arc::new(Untouchable), ix.clone());
    let mut batch = store.batch().unwrap();
    for i in 0..100_000 {
        batch.put(k(&format!("/big/{i:06}")), Vec::new()).unwrap();
    }
    batch.commit().unwrap();
    store.put(&k("/other/x"), b"").unwrap();
    let (dir, _) = ix.resolve(&k("/big")).unwrap().unwrap();
    assert_eq!(ix.entry_count(dir).unwrap(), 100_000);
    let mut total = 0;
    let mut cookie = 0;
    loop {
        let page = ix.list(dir, cookie, 4096).unwrap();
        let Some(last) = page.last() else { break };
        cookie = last.cookie;
        total += page.len();
    }
    assert_eq!(total, 100_000);
    assert!(ix.lookup(dir, "054321").unwrap().is_some());
    assert!(store.has(&k("/big/099999")).unwrap());
    assert_eq!(store.get_size(&k("/big/000000")).unwrap(), 0);
    let q = Query {
        prefix: "/big".into(),
        keys_only: true,
        limit: 10,
        offset: 5,
        orders: vec![crate::datastore::Order::Key],
        ..Query::default()
    };
    let keys: Vec<String> = store
        .query(q)
        .unwrap()
        .map(|e| e.unwrap().key.into_string())
        .collect();
    assert_eq!(keys.first().map(String::as_str), Some("/big/000005"));
    assert_eq!(keys.len(), 10);
}

/// Creates `n` files named `{prefix}{i}` in the root in one write; returns their ids.
fn create_files(ix: &Index, prefix: &str, n: usize) -> Vec<NodeId> {
    ix.write(|tx| {
        (0..n)
            .map(|i| {
                let name = format!("{prefix}{i}");
                tx.create(ROOT, &name, Node::new(NodeKind::File, 0, "", 0o644, 0, 0))
            })
            .collect()
    })
    .unwrap()
}

fn meta_value(ix: &Index, name: &str) -> u64 {
    let reading = ix.read_txn().unwrap();
    View::<_, Meta>::new(reading.view())
        .get(name)
        .unwrap()
        .unwrap()
}

#[test]
fn node_ids_and_cookies_are_never_handed_out_twice_across_crashes_and_clean_stops() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("index.redb");
    let mut seen = std::collections::HashSet::new();
    let mut last_cookie = 0;
    // Each round crosses a reserved block at least once; odd rounds stop cleanly, even ones
    // crash (dropped without close) after making their writes durable.
    for round in 0..4 {
        let ix = Index::open(&path, IndexOptions::default()).unwrap();
        let mut ids = create_files(&ix, &format!("r{round}-"), 2100);
        ids.extend(create_files(&ix, &format!("s{round}-"), 2100));
        for id in ids {
            assert!(seen.insert(id), "round {round}: id {id} handed out twice");
        }
        // Listing order is creation order: cookies only grow, across reopens too.
        let listed = ix.list(ROOT, 0, usize::MAX).unwrap();
        assert_eq!(listed.len(), 4200 * (round + 1));
        for e in &listed[4200 * round..] {
            assert!(
                e.cookie > last_cookie,
                "round {round}: cookie {} reused",
                e.cookie
            );
            last_cookie = e.cookie;
        }
        if round % 2 == 1 {
            ix.close().unwrap();
        } else {
            ix.sync().unwrap();
        }
    }
}

#[test]
fn ids_are_taken_from_memory_with_one_meta_write_per_block() {
    let ix = mem_index();
    let before = meta_value(&ix, META_NEXT_ID);
    let first = create_files(&ix, "a", 1)[0];
    assert_eq!(first, before);
    // The first create reserved a block; the next ones inside it leave the meta table alone.
    let bound = meta_value(&ix, META_NEXT_ID);
    assert_eq!(bound, first + COUNTER_BLOCK);
    for i in 0..20 {
        create_files(&ix, &format!("b{i}-"), 1);
    }
    assert_eq!(meta_value(&ix, META_NEXT_ID), bound);
    // A write that does not commit hands its id out again.
    let dropped = ix
        .write_if(|tx| {
            let id = tx.create(ROOT, "gone", Node::new(NodeKind::File, 0, "", 0o644, 0, 0))?;
            Ok((id, false))
        })
        .unwrap();
    assert_eq!(create_files(&ix, "c", 1)[0], dropped);
    // A failed write too.
    let err = ix
        .write(|tx| {
            tx.create(ROOT, "x", Node::new(NodeKind::File, 0, "", 0o644, 0, 0))?;
            tx.create(ROOT, "x", Node::new(NodeKind::File, 0, "", 0o644, 0, 0))
        })
        .unwrap_err();
    assert_eq!(err.kind(), IndexErrorKind::AlreadyExists);
    assert_eq!(create_files(&ix, "d", 1)[0], dropped + 1);
}

/// Writes an index file in the seven-table layout of format version 1, as dsfs wrote it before
/// the one-table layout: an explicit empty directory `/d` (10), a file `/f` (11, 3 bytes, an
/// xattr, a second name `/h`), a symlink `/l` (12) to `f`, and counters reserved up to
/// `next_id` and `next_cookie`.
fn write_old_layout(path: &std::path::Path, next_id: u64, next_cookie: u64) {
    use layout::old;
    let db = redb::Database::create(path).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut meta = txn.open_table(old::META).unwrap();
        meta.insert("format_version", 1).unwrap();
        meta.insert(META_NEXT_ID, next_id).unwrap();
        meta.insert(META_NEXT_COOKIE, next_cookie).unwrap();
        meta.insert(META_OPEN, 0).unwrap();
        let mut nodes = txn.open_table(old::NODES).unwrap();
        let mut root = Node::new(NodeKind::Dir, ROOT, "", 0o755, 0, 0);
        root.explicit = true;
        root.subdirs = 1;
        let mut d = Node::new(NodeKind::Dir, ROOT, "d", 0o700, 7, 8);
        d.explicit = true;
        let mut f = Node::new(NodeKind::File, ROOT, "f", 0o640, 9, 10);
        f.value = Some(3);
        f.links = 2;
        let mut l = Node::new(NodeKind::Symlink, ROOT, "l", 0o777, 0, 0);
        l.target = b"f".to_vec();
        for (id, n) in [(ROOT, &root), (10, &d), (11, &f), (12, &l)] {
            nodes.insert(id, n.encode().as_slice()).unwrap();
        }
        let mut dirents = txn.open_table(old::DIRENTS).unwrap();
        let mut cookies = txn.open_table(old::COOKIES).unwrap();
        for (name, id, cookie) in [("d", 10, 1), ("f", 11, 2), ("l", 12, 3), ("h", 11, 4)] {
            dirents.insert((ROOT, name), (id, cookie)).unwrap();
            cookies.insert((ROOT, cookie), (id, name)).unwrap();
        }
        txn.open_table(old::KEYS)
            .unwrap()
            .insert("/f", (11, 3))
            .unwrap();
        txn.open_table(old::XATTRS)
            .unwrap()
            .insert((11, "user.x"), b"v".as_slice())
            .unwrap();
        txn.open_table(old::ALIASES)
            .unwrap()
            .insert((11, ROOT, "h"), ())
            .unwrap();
    }
    txn.commit().unwrap();
}

/// The tables of the file at `path`, and what its `meta` table holds.
fn tables_and_meta(path: &std::path::Path) -> (Vec<String>, Vec<(String, u64)>) {
    use redb::{ReadableDatabase, TableHandle};
    let db = redb::Database::open(path).unwrap();
    let txn = db.begin_read().unwrap();
    let mut tables: Vec<String> = txn
        .list_tables()
        .unwrap()
        .map(|t| t.name().to_owned())
        .collect();
    tables.sort();
    let meta = txn
        .open_table(layout::old::META)
        .unwrap()
        .iter()
        .unwrap()
        .map(|e| {
            let (k, v) = e.unwrap();
            (k.value().to_owned(), v.value())
        })
        .collect();
    (tables, meta)
}

#[test]
fn an_index_in_the_seven_table_layout_is_migrated_with_every_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("index.redb");
    write_old_layout(&path, 5_000, 6_000);
    for round in 0..2 {
        let ix = Index::open(&path, IndexOptions::default()).unwrap();
        assert!(!ix.was_unclean());
        let listed: Vec<(String, NodeId, u64)> = ix
            .list(ROOT, 0, usize::MAX)
            .unwrap()
            .into_iter()
            .map(|e| (e.name, e.id, e.cookie))
            .collect();
        let mut want = vec![
            ("d".to_owned(), 10, 1),
            ("f".to_owned(), 11, 2),
            ("l".to_owned(), 12, 3),
            ("h".to_owned(), 11, 4),
        ];
        if round == 1 {
            want.push(("new".to_owned(), 5_000, 6_000));
        }
        assert_eq!(listed, want);
        let d = ix.node(10).unwrap();
        assert_eq!(
            (d.kind, d.explicit, d.mode, d.uid, d.gid),
            (NodeKind::Dir, true, 0o700, 7, 8)
        );
        assert_eq!(ix.entry_count(10).unwrap(), 0);
        let f = ix.node(11).unwrap();
        assert_eq!((f.value, f.links, f.mode, f.uid), (Some(3), 2, 0o640, 9));
        assert_eq!(ix.xattr(11, "user.x").unwrap(), Some(b"v".to_vec()));
        assert_eq!(ix.xattr_names(11).unwrap(), vec!["user.x".to_owned()]);
        assert_eq!(ix.aliases(11).unwrap(), vec![(ROOT, "h".to_owned())]);
        assert_eq!(ix.lookup(ROOT, "h").unwrap().unwrap().0, 11);
        let l = ix.node(12).unwrap();
        assert_eq!(
            (l.kind, l.target.as_slice()),
            (NodeKind::Symlink, b"f".as_slice())
        );
        assert_eq!(ix.value_size(&k("/f")).unwrap(), Some(3));
        assert_eq!(ix.key_count().unwrap(), 1);
        let keys: Vec<Key> = ix.keys(None).unwrap().map(|e| e.unwrap().key).collect();
        assert_eq!(keys, vec![k("/f")]);
        assert_eq!(ix.key_of(11).unwrap(), k("/f"));
        if round == 0 {
            // Ids and cookies go on above the counters the old file had reserved.
            let id = ix
                .write(|tx| tx.create(ROOT, "new", Node::new(NodeKind::File, 0, "", 0o644, 0, 0)))
                .unwrap();
            assert_eq!(id, 5_000);
        }
        ix.close().unwrap();
        drop(ix);
        // The old tables are gone; `meta` holds the new version alone, which a dsfs that reads
        // only version 1 refuses.
        let (tables, meta) = tables_and_meta(&path);
        assert_eq!(tables, vec!["index".to_owned(), "meta".to_owned()]);
        assert_eq!(meta, vec![("format_version".to_owned(), 2)]);
    }
}

/// The log lines at info level and above from `dsfs::index`, of every test in this process
/// since the first call (which installs the logger): a test looks for the lines that name its
/// own temporary files.
fn captured_log() -> &'static std::sync::Mutex<Vec<String>> {
    struct Capture(std::sync::Mutex<Vec<String>>);
    impl log::Log for Capture {
        fn enabled(&self, m: &log::Metadata) -> bool {
            m.level() <= log::Level::Info && m.target().starts_with("dsfs::index")
        }
        fn log(&self, r: &log::Record) {
            if self.enabled(r.metadata())
                && let Ok(mut lines) = self.0.lock()
            {
                lines.push(r.args().to_string());
            }
        }
        fn flush(&self) {}
    }
    static CAPTURE: Capture = Capture(std::sync::Mutex::new(Vec::new()));
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        log::set_logger(&CAPTURE).expect("no other logger in the library's tests");
        log::set_max_level(log::LevelFilter::Info);
    });
    &CAPTURE.0
}

/// A migration says at info level when it starts and when it ends, with the records moved and
/// the seconds taken (it said only the records, at the end; a large index took a while with no
/// sign of what the open was doing).
#[test]
fn a_migration_logs_when_it_starts_and_when_it_ends_with_records_and_seconds() {
    let log = captured_log();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("index.redb");
    write_old_layout(&path, 5_000, 6_000);
    Index::open(&path, IndexOptions::default())
        .unwrap()
        .close()
        .unwrap();
    let shown = format!("index {}:", path.display());
    let lines: Vec<String> = log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.starts_with(&shown))
        .cloned()
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[0].contains("moving its records from the seven-table layout"),
        "{lines:?}"
    );
    let end = lines[1].strip_prefix(&shown).unwrap();
    let seconds = end
        .strip_prefix(" moved 18 records into one table in ")
        .and_then(|t| t.strip_suffix(" s"))
        .and_then(|t| t.parse::<f64>().ok());
    assert!(seconds.is_some_and(|s| s >= 0.0), "{lines:?}");
}

/// How long migrating an index of 100,000 files (100 directories of 1,000) takes: run with
/// `cargo test --lib index::tests::migrating -- --ignored --nocapture`. Checks that every
/// file is found after it.
#[test]
#[ignore = "a measurement; takes seconds"]
fn migrating_an_index_of_100_000_files() {
    use layout::old;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("index.redb");
    let (dirs, per_dir) = (100u64, 1_000u64);
    let first = 1_000u64;
    write_old_layout(
        &path,
        first + dirs * (per_dir + 1),
        first + dirs * (per_dir + 1),
    );
    let built = std::time::Instant::now();
    {
        let db = redb::Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut nodes = txn.open_table(old::NODES).unwrap();
            let mut dirents = txn.open_table(old::DIRENTS).unwrap();
            let mut cookies = txn.open_table(old::COOKIES).unwrap();
            let mut keys = txn.open_table(old::KEYS).unwrap();
            let mut root = Node::new(NodeKind::Dir, ROOT, "", 0o755, 0, 0);
            root.explicit = true;
            root.subdirs = 1 + dirs as u32;
            nodes.insert(ROOT, root.encode().as_slice()).unwrap();
            let mut id = first;
            for g in 0..dirs {
                let name = format!("g{g}");
                let mut d = Node::new(NodeKind::Dir, ROOT, &name, 0o755, 0, 0);
                d.explicit = true;
                let gid = id;
                id += 1;
                nodes.insert(gid, d.encode().as_slice()).unwrap();
                dirents.insert((ROOT, name.as_str()), (gid, gid)).unwrap();
                cookies.insert((ROOT, gid), (gid, name.as_str())).unwrap();
                for f in 0..per_dir {
                    let name = format!("f{f}");
                    let mut n = Node::new(NodeKind::File, gid, &name, 0o644, 0, 0);
                    n.value = Some(100);
                    nodes.insert(id, n.encode().as_slice()).unwrap();
                    dirents.insert((gid, name.as_str()), (id, id)).unwrap();
                    cookies.insert((gid, id), (id, name.as_str())).unwrap();
                    keys.insert(format!("/g{g}/{name}").as_str(), (id, 100))
                        .unwrap();
                    id += 1;
                }
            }
        }
        txn.commit().unwrap();
    }
    let built = built.elapsed();
    let size = std::fs::metadata(&path).unwrap().len();
    let opened = std::time::Instant::now();
    let ix = Index::open(&path, IndexOptions::default()).unwrap();
    let opened = opened.elapsed();
    assert_eq!(ix.key_count().unwrap(), dirs * per_dir + 1);
    let (id, node) = ix.resolve(&k("/g99/f999")).unwrap().unwrap();
    assert_eq!((node.kind, node.size()), (NodeKind::File, 100));
    assert_eq!(ix.key_of(id).unwrap(), k("/g99/f999"));
    assert_eq!(
        ix.list(ROOT, 0, usize::MAX).unwrap().len(),
        4 + dirs as usize
    );
    ix.close().unwrap();
    println!(
        "100,000 files: old layout written in {:.2} s ({} MB); opened with the migration in {:.2} s",
        built.as_secs_f64(),
        size / 1_000_000,
        opened.as_secs_f64()
    );
}

#[test]
fn an_index_of_an_unknown_format_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("index.redb");
    {
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(layout::old::META)
            .unwrap()
            .insert("format_version", 3)
            .unwrap();
        txn.commit().unwrap();
    }
    let err = Index::open(&path, IndexOptions::default()).err().unwrap();
    assert_eq!(err.kind(), IndexErrorKind::Corrupt);
    assert!(err.to_string().contains("format version 3"), "{err}");
}

#[test]
fn a_seven_table_index_is_salvaged_too() {
    // A damaged file may be in the older layout: restore reads its tables as well.
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("old.redb");
    write_old_layout(&old, 5_000, 6_000);
    let store = MemStore::new();
    store.put(&k("/f"), b"abc").unwrap();
    let ix = mem_index();
    reconcile::reindex(&ix, &store, &mut |_| {}).unwrap();
    let report = salvage::restore(&ix, &old);
    assert!(report.opened, "{report:?}");
    assert_eq!((report.nodes_read, report.unreadable), (4, 0), "{report:?}");
    assert_eq!(report.xattrs_restored, 1, "{report:?}");
    let (d, dn) = ix.resolve(&k("/d")).unwrap().unwrap();
    assert_eq!((dn.explicit, dn.mode & 0o7777, dn.uid), (true, 0o700, 7));
    assert_eq!(ix.entry_count(d).unwrap(), 0);
    let (f, fnode) = ix.resolve(&k("/f")).unwrap().unwrap();
    assert_eq!((fnode.mode & 0o7777, fnode.uid), (0o640, 9));
    assert_eq!(ix.xattr(f, "user.x").unwrap(), Some(b"v".to_vec()));
    let (_, l) = ix.resolve(&k("/l")).unwrap().unwrap();
    assert_eq!(
        (l.kind, l.target.as_slice()),
        (NodeKind::Symlink, b"f".as_slice())
    );
}

#[test]
fn the_kept_key_count_follows_every_kind_of_write() {
    let ix = mem_index();
    let scanned = |ix: &Index| ix.keys(None).unwrap().count() as u64;
    assert_eq!(ix.key_count().unwrap(), 0);
    assert!(!ix.has_keys().unwrap());
    ix.record_put(&k("/a/b"), 1).unwrap();
    assert!(ix.has_keys().unwrap());
    ix.record_put(&k("/a/b"), 2).unwrap();
    ix.record_batch([(&k("/c"), Some(1)), (&k("/d"), Some(1)), (&k("/c"), None)])
        .unwrap();
    assert_eq!(ix.key_count().unwrap(), scanned(&ix));
    let (a, _) = ix.resolve(&k("/a")).unwrap().unwrap();
    let (id, _) = ix
        .create_file(
            a,
            "e",
            Node::new(NodeKind::File, 0, "", 0o644, 0, 0),
            &k("/a/e"),
            0,
        )
        .unwrap();
    assert_eq!(ix.key_count().unwrap(), 3);
    let removed = match ix.unlink_file(a, "e", Some(id), |_| false).unwrap() {
        unlink::Unlinked::Removed(r) => r,
        unlink::Unlinked::Kept(..) => panic!("kept"),
    };
    assert_eq!(ix.key_count().unwrap(), 2);
    assert!(ix.restore_file(a, "e", &removed).unwrap());
    assert_eq!(ix.key_count().unwrap(), 3);
    // A write that fails or is not committed changes nothing.
    ix.write(|tx| {
        tx.set_key(&k("/z"), 99, 1)?;
        Err::<(), _>(IndexError::corrupt("no"))
    })
    .unwrap_err();
    assert_eq!(ix.key_count().unwrap(), scanned(&ix));
    ix.record_delete(&k("/a/b")).unwrap();
    assert_eq!(ix.key_count().unwrap(), scanned(&ix));
    ix.clear().unwrap();
    assert_eq!(ix.key_count().unwrap(), 0);
    ix.record_put(&k("/y"), 1).unwrap();
    assert_eq!(ix.key_count().unwrap(), 1);
}
