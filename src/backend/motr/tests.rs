use super::fake::{FakeMotr, OpKind};
use super::*;

const IDX: Id128 = Id128 {
    hi: 0x7800_0000_0000_0001,
    lo: 0x10,
};

fn store(layout: Layout) -> (Arc<FakeMotr>, MotrStore) {
    let fake = Arc::new(FakeMotr::in_memory());
    let options = MotrOptions {
        layout,
        inline_max: 100,
        ..MotrOptions::new(IDX)
    };
    let s = MotrStore::open(fake.clone(), options).unwrap();
    (fake, s)
}

/// The value records (not the reserved ones, whose keys start with a NUL byte).
fn values(fake: &FakeMotr) -> Vec<ops::Record> {
    let mut v = fake.records(IDX);
    v.retain(|(k, _)| k.first() != Some(&0));
    v
}

fn hex(v: u128) -> String {
    format!("{v:032x}")
}

#[test]
fn fnv1_128_vectors() {
    assert_eq!(hex(fnv1_128(b"")), "6c62272e07bb014262b821756295c58d");
    assert_eq!(hex(fnv1_128(b"foo")), "a68bb298318b5822836dbc78c6a7b1cb");
    assert_eq!(
        hex(fnv1_128(
            b"/blocks/CIQA4XCGRCRTCCHV7XSGAZPZJOAOHLPOI6IQR3H6YQ"
        )),
        "97fe08266e67dce8b11af6d6c46b80de"
    );
    // FNV-1, not FNV-1a (whose "foo" differs).
    assert_eq!(hex(fnv1_128(b"a")), "d228cb69101a8caf78912b704e4a141e");
}

#[test]
fn object_ids_are_the_key_hash_then_per_generation() {
    let key = b"/blocks/CIQA4XCGRCRTCCHV7XSGAZPZJOAOHLPOI6IQR3H6YQ";
    assert_eq!(
        object_id(key, 0),
        Id128::from_u128(0x97fe08266e67dce8b11af6d6c46b80de)
    );
    assert_ne!(object_id(key, 1), object_id(key, 0));
    assert_ne!(object_id(key, 1), object_id(key, 2));
}

#[test]
fn index_fids_are_parsed_and_checked() {
    let want = Id128 {
        hi: 0x7800_0000_0000_0001,
        lo: 1,
    };
    assert_eq!(parse_index_fid("<0x7800000000000001:0x1>").unwrap(), want);
    assert_eq!(parse_index_fid("0x7800000000000001:1").unwrap(), want);
    assert_eq!(parse_index_fid("7800000000000001:1").unwrap(), want);
    for bad in [
        "0x7000000000000001:0",
        "0x7800000000000000:5",
        "x:1",
        "0x7800000000000001",
        "",
    ] {
        let e = parse_index_fid(bad).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{bad}");
    }
}

/// A record value above what Motr's CAS holds is never sent: on a real node a 64 KiB value
/// aborted the IO service. go-ds-motr's layout refuses such values with a typed error and
/// says so in its capabilities; the native layout keeps them in objects.
#[test]
fn values_too_large_for_a_record_are_refused_in_go_ds_motr_layout_and_never_sent() {
    let (fake, s) = store(Layout::GoDsMotr);
    assert_eq!(
        s.capabilities().max_value_size,
        Some(ops::MAX_RECORD_VALUE as u64)
    );
    let key = Key::new("/blocks/BIG");
    // The next PUT sent fails with -EIO: the refused put must not be it.
    fake.inject(OpKind::Put, -libc::EIO, 1);
    let e = s
        .put(&key, &vec![1u8; ops::MAX_RECORD_VALUE + 1])
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    assert!(values(&fake).is_empty());
    let e = s.put(&key, b"small").unwrap_err();
    assert_eq!(
        e.kind(),
        ErrorKind::Io,
        "the injected failure was still pending: {e}"
    );
    s.put(&key, &vec![2u8; ops::MAX_RECORD_VALUE]).unwrap();
    assert_eq!(s.get_size(&key).unwrap(), ops::MAX_RECORD_VALUE as u64);

    let (fake, s) = store(Layout::Native);
    assert_eq!(s.capabilities().max_value_size, None);
    s.put(&key, &vec![3u8; 4 * ops::MAX_RECORD_VALUE]).unwrap();
    assert_eq!(fake.object_count(), 1);
    assert!(
        values(&fake)
            .iter()
            .all(|(_, v)| v.len() <= ops::MAX_RECORD_VALUE)
    );

    // An inline limit above a record's is a configuration error.
    let options = MotrOptions {
        inline_max: ops::MAX_RECORD_VALUE + 1,
        ..MotrOptions::new(IDX)
    };
    match MotrStore::open(Arc::new(FakeMotr::in_memory()), options) {
        Err(e) => assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}"),
        Ok(_) => panic!("inline={} was accepted", ops::MAX_RECORD_VALUE + 1),
    }
}

#[test]
fn go_ds_motr_records_are_key_plus_empty_digest_and_the_whole_value() {
    let (fake, s) = store(Layout::GoDsMotr);
    let key = Key::new("/blocks/CIQA4XCGRCRTCCHV7XSGAZPZJOAOHLPOI6IQR3H6YQ");
    let value = vec![7u8; ops::MAX_RECORD_VALUE];
    s.put(&key, &value).unwrap();
    let mut want_key = key.as_bytes().to_vec();
    want_key.extend_from_slice(&[
        0x6c, 0x62, 0x27, 0x2e, 0x07, 0xbb, 0x01, 0x42, 0x62, 0xb8, 0x21, 0x75, 0x62, 0x95, 0xc5,
        0x8d,
    ]);
    assert_eq!(fake.records(IDX), vec![(want_key.clone(), value.clone())]);
    assert_eq!(fake.object_count(), 0, "compat values never go to objects");

    // A record written the way go-ds-motr writes it reads back through the store.
    let mut other = b"/blocks/OTHER".to_vec();
    other.extend_from_slice(&GO_DS_MOTR_SUFFIX);
    fake.idx_put(IDX, &[(&other, b"from go")], ops::OVERWRITE)
        .unwrap();
    assert_eq!(s.get(&Key::new("/blocks/OTHER")).unwrap(), b"from go");
    assert_eq!(s.get_size(&Key::new("/blocks/OTHER")).unwrap(), 7);
    let keys: Vec<String> = s
        .query(Query::prefix("/blocks"))
        .unwrap()
        .rest()
        .unwrap()
        .into_iter()
        .map(|e| e.key.into_string())
        .collect();
    assert_eq!(
        keys,
        vec![key.as_str().to_owned(), "/blocks/OTHER".to_owned()]
    );
    s.delete(&key).unwrap();
    assert_eq!(fake.records(IDX).len(), 1);
}

#[test]
fn native_records_hold_small_values_inline_and_large_ones_in_objects() {
    let (fake, s) = store(Layout::Native);
    s.put(&Key::new("/small"), b"abc").unwrap();
    assert_eq!(values(&fake), vec![(b"/small".to_vec(), b"\0abc".to_vec())]);
    let big: Vec<u8> = (0..(3 * ops::MAX_IO + 123))
        .map(|i| (i % 251) as u8)
        .collect();
    s.put(&Key::new("/big"), &big).unwrap();
    assert_eq!(fake.object_count(), 1);
    let rec = values(&fake)[0].1.clone();
    assert_eq!(
        Rec::decode(&rec).unwrap(),
        Rec::Object {
            size: big.len() as u64,
            generation: 0,
            id: object_id(b"/big", 0),
            seq: 0,
        }
    );
    assert_eq!(s.get(&Key::new("/big")).unwrap(), big);
    let mut buf = vec![0u8; 10_000];
    let n = s.read_at(&Key::new("/big"), 4000, &mut buf).unwrap();
    assert_eq!(n, buf.len());
    assert_eq!(&buf[..], &big[4000..14_000]);
    let n = s
        .read_at(&Key::new("/big"), big.len() as u64 - 5, &mut buf)
        .unwrap();
    assert_eq!(&buf[..n], &big[big.len() - 5..]);
    // Replacing writes the next generation and removes the old object.
    s.put(&Key::new("/big"), &big[..5000]).unwrap();
    assert_eq!(fake.object_count(), 1);
    let rec = Rec::decode(&values(&fake)[0].1).unwrap();
    assert!(matches!(
        rec,
        Rec::Object {
            generation: 1,
            size: 5000,
            ..
        }
    ));
    assert_eq!(s.get(&Key::new("/big")).unwrap(), &big[..5000]);
    s.delete(&Key::new("/big")).unwrap();
    assert_eq!(fake.object_count(), 0);
    s.delete(&Key::new("/big")).unwrap();
}

#[test]
fn a_failed_object_write_leaves_the_old_value_and_no_object() {
    let (fake, s) = store(Layout::Native);
    let key = Key::new("/v");
    s.put(&key, &[1u8; 10_000]).unwrap();
    fake.inject(OpKind::Write, -libc::ETIMEDOUT, 1);
    let e = s.put(&key, &[2u8; 20_000]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TimedOut);
    assert_eq!(s.get(&key).unwrap(), vec![1u8; 10_000]);
    assert_eq!(fake.object_count(), 1);
    fake.inject(OpKind::Put, -libc::ECONNREFUSED, 1);
    let e = s.put(&key, &[3u8; 20_000]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable);
    assert_eq!(s.get(&key).unwrap(), vec![1u8; 10_000]);
    assert_eq!(fake.object_count(), 1);
}

#[test]
fn a_left_over_object_generation_is_skipped_not_reused() {
    let (fake, s) = store(Layout::Native);
    let key = Key::new("/v");
    // An object of generation 0 left by a crashed write (no record points at it).
    fake.obj_create(object_id(key.as_bytes(), 0)).unwrap();
    s.put(&key, &[5u8; 9000]).unwrap();
    assert_eq!(s.get(&key).unwrap(), vec![5u8; 9000]);
    assert_eq!(fake.object_count(), 2);
}

#[test]
fn rename_copies_and_a_later_put_of_the_old_key_leaves_the_new_one_alone() {
    let (fake, s) = store(Layout::Native);
    let (a, b) = (Key::new("/a"), Key::new("/b"));
    s.put(&a, &[1u8; 9000]).unwrap();
    s.rename(&a, &b).unwrap();
    assert!(!s.has(&a).unwrap());
    // The new value of /a must not take the object /b now uses.
    s.put(&a, &[2u8; 9000]).unwrap();
    assert_eq!(s.get(&b).unwrap(), vec![1u8; 9000]);
    assert_eq!(s.get(&a).unwrap(), vec![2u8; 9000]);
    assert_eq!(fake.object_count(), 2);
}

#[test]
fn queries_page_through_next_and_stay_inside_the_prefix() {
    let (_fake, s) = store(Layout::Native);
    for i in 0..(2 * PAGE + 7) {
        s.put(&Key::new(format!("/d/{i:05}")), b"x").unwrap();
    }
    s.put(&Key::new("/d0"), b"outside").unwrap();
    s.put(&Key::new("/c"), b"outside").unwrap();
    let got = s.query(Query::prefix("/d")).unwrap().rest().unwrap();
    assert_eq!(got.len(), 2 * PAGE + 7);
    assert!(got.windows(2).all(|w| w[0].key < w[1].key));
    assert_eq!(
        s.query(Query::default()).unwrap().rest().unwrap().len(),
        2 * PAGE + 9
    );
}

#[test]
fn sync_persists_earlier_writes_through_sync_wait() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("motr.fake");
    let open = || {
        let fake = Arc::new(FakeMotr::open(&path).unwrap());
        MotrStore::open(fake, MotrOptions::new(IDX)).unwrap()
    };
    let s = open();
    s.put(&Key::new("/kept"), b"1").unwrap();
    s.sync(&Key::root()).unwrap();
    s.put(&Key::new("/lost"), b"2").unwrap();
    drop(s); // a crash: no close
    let s = open();
    assert!(s.has(&Key::new("/kept")).unwrap());
    assert!(!s.has(&Key::new("/lost")).unwrap());
    // The sync marker is no datastore key.
    assert_eq!(s.query(Query::default()).unwrap().rest().unwrap().len(), 1);
}

#[test]
fn an_unreachable_service_is_an_error_kind_not_a_hang() {
    let (fake, s) = store(Layout::Native);
    fake.inject(OpKind::Get, -libc::ETIMEDOUT, 1);
    assert_eq!(
        s.get(&Key::new("/x")).unwrap_err().kind(),
        ErrorKind::TimedOut
    );
    fake.inject(OpKind::Next, -libc::ENOTCONN, 1);
    assert_eq!(
        s.query(Query::default()).err().map(|e| e.kind()),
        Some(ErrorKind::Unavailable)
    );
}

/// Inline values whose records do not fit one `NEXT` reply (`ops::MAX_REPLY`): a scan still
/// lists every key. The real client reports such a reply as the end of the index (found on a
/// single node: `dsfs fsck` saw 0 keys in a store of 132 files written through a mount).
#[test]
fn a_scan_over_records_larger_than_one_reply_lists_every_key() {
    let fake = Arc::new(FakeMotr::in_memory());
    let options = MotrOptions {
        inline_max: 8192,
        ..MotrOptions::new(IDX)
    };
    let s = MotrStore::open(fake.clone(), options).unwrap();
    let n = 3 * ops::MAX_REPLY / 8192;
    for i in 0..n {
        s.put(&Key::new(format!("/v{i:03}")), &vec![i as u8; 8000 + i])
            .unwrap();
    }
    let q = Query {
        keys_only: true,
        returns_sizes: true,
        orders: vec![crate::datastore::Order::Key],
        ..Query::default()
    };
    let listed: Vec<(String, Option<u64>)> = s
        .query(q)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.key.as_str().to_owned(), e.size)
        })
        .collect();
    let want: Vec<(String, Option<u64>)> = (0..n)
        .map(|i| (format!("/v{i:03}"), Some((8000 + i) as u64)))
        .collect();
    assert_eq!(listed, want);
    let values = s.query(Query::default()).unwrap().count();
    assert_eq!(values, n);
    // The same records through one paged NEXT, from the first value record.
    let recs = ops::next_records(&*fake, IDX, b"/", PAGE, 0).unwrap();
    assert_eq!(recs.len(), n);
    // A NEXT asking for as many records as there are stops at the last one.
    let recs = ops::next_records(&*fake, IDX, b"/", n, 0).unwrap();
    assert_eq!(recs.len(), n);
    let recs = ops::next_records(&*fake, IDX, b"/v005", 7, ops::EXCLUDE_START_KEY).unwrap();
    let keys: Vec<&[u8]> = recs.iter().map(|(k, _)| k.as_slice()).collect();
    assert_eq!(keys.first().copied(), Some(&b"/v006"[..]));
    assert_eq!(keys.len(), 7);
}

/// The in-process Motr with a hook run before every object read and every object write.
struct Hooked {
    fake: FakeMotr,
    before_read: Box<dyn Fn() + Send + Sync>,
    before_write: Box<dyn Fn() + Send + Sync>,
}

impl Hooked {
    fn new(
        before_read: impl Fn() + Send + Sync + 'static,
        before_write: impl Fn() + Send + Sync + 'static,
    ) -> Hooked {
        Hooked {
            fake: FakeMotr::in_memory(),
            before_read: Box::new(before_read),
            before_write: Box::new(before_write),
        }
    }
}

impl ops::MotrOps for Hooked {
    fn idx_create(&self, idx: Id128) -> ops::OpResult<()> {
        self.fake.idx_create(idx)
    }
    fn idx_put(
        &self,
        idx: Id128,
        records: &[(&[u8], &[u8])],
        flags: u32,
    ) -> ops::OpResult<Vec<i32>> {
        self.fake.idx_put(idx, records, flags)
    }
    fn idx_get(&self, idx: Id128, keys: &[&[u8]]) -> ops::OpResult<Vec<Result<Vec<u8>, i32>>> {
        self.fake.idx_get(idx, keys)
    }
    fn idx_del(&self, idx: Id128, keys: &[&[u8]], flags: u32) -> ops::OpResult<Vec<i32>> {
        self.fake.idx_del(idx, keys, flags)
    }
    fn idx_next(
        &self,
        idx: Id128,
        start: &[u8],
        count: usize,
        flags: u32,
    ) -> ops::OpResult<Vec<ops::Record>> {
        self.fake.idx_next(idx, start, count, flags)
    }
    fn obj_create(&self, id: Id128) -> ops::OpResult<()> {
        self.fake.obj_create(id)
    }
    fn obj_delete(&self, id: Id128) -> ops::OpResult<()> {
        self.fake.obj_delete(id)
    }
    fn obj_write(&self, id: Id128, offset: u64, data: &[u8]) -> ops::OpResult<()> {
        (self.before_write)();
        self.fake.obj_write(id, offset, data)
    }
    fn obj_read(&self, id: Id128, offset: u64, buf: &mut [u8]) -> ops::OpResult<()> {
        (self.before_read)();
        self.fake.obj_read(id, offset, buf)
    }
    fn block_size(&self) -> usize {
        self.fake.block_size()
    }
}

/// A reader of a value held in an object reads a whole value while a writer in the same
/// process keeps replacing it (and removing the object the reader had found). It used to give
/// up after five changed records with "object of a record is missing".
#[test]
fn a_value_replaced_during_every_read_is_still_read_whole() {
    use std::sync::atomic::{AtomicU32, Ordering};
    // While armed, each object read has another thread replace the value of `/raced`, and
    // gives that thread 300 ms to finish before the read goes on.
    let armed = Arc::new(AtomicU32::new(0));
    let store = Arc::new(std::sync::OnceLock::<std::sync::Weak<MotrStore>>::new());
    let replace = {
        let (armed, store) = (armed.clone(), store.clone());
        move || {
            let left = armed.load(Ordering::SeqCst);
            if left == 0 {
                return;
            }
            armed.store(left - 1, Ordering::SeqCst);
            let store = store.get().and_then(std::sync::Weak::upgrade).unwrap();
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let value = vec![left as u8; 1000];
                let _ = tx.send(store.put(&Key::new("/raced"), &value));
            });
            if let Ok(put) = rx.recv_timeout(std::time::Duration::from_millis(300)) {
                put.unwrap();
            }
        }
    };
    let motr = Arc::new(Hooked::new(replace, || {}));
    let options = MotrOptions {
        inline_max: 100,
        ..MotrOptions::new(IDX)
    };
    let s = Arc::new(MotrStore::open(motr, options).unwrap());
    store.set(Arc::downgrade(&s)).unwrap();
    let k = Key::new("/raced");
    s.put(&k, &[0xEE; 1000]).unwrap();
    armed.store(8, Ordering::SeqCst);
    let v = s.get(&k).expect("a get while the value is replaced");
    assert_eq!(v.len(), 1000);
    assert!(v.iter().all(|&b| b == v[0]), "a torn value");
    armed.store(8, Ordering::SeqCst);
    let mut buf = [0u8; 500];
    let n = s
        .read_at(&k, 300, &mut buf)
        .expect("a read_at while the value is replaced");
    assert_eq!(n, 500);
    assert!(buf.iter().all(|&b| b == buf[0]), "a torn range");
    armed.store(0, Ordering::SeqCst);
    // The puts that waited for the readers land after them (in their own threads, which a
    // loaded machine may run seconds later: wait with a generous deadline).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut last = s.get(&k).unwrap();
    while last[0] != 8 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
        last = s.get(&k).unwrap();
    }
    assert_eq!(last, vec![8u8; 1000], "the writer's put was lost");
}

/// While a put writes the new object of a value (seconds for a large value on a real
/// cluster), a reader of the key in the same process reads the old value instead of waiting
/// for the put: on a real Motr, readers of a file rewritten over and over got 4 reads in while
/// 20 puts went by. Once the put finishes, readers see the new value.
#[test]
fn a_reader_reads_the_old_value_while_a_put_writes_the_new_object() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let (started_tx, started) = std::sync::mpsc::channel();
    let (release, release_rx) = std::sync::mpsc::channel::<()>();
    // While armed, the next object write says it started and then waits (at most 20 s) to be
    // let go.
    let armed = Arc::new(AtomicBool::new(false));
    let hold = {
        let armed = armed.clone();
        let started = parking_lot::Mutex::new(Some(started_tx));
        let release = parking_lot::Mutex::new(Some(release_rx));
        move || {
            if !armed.swap(false, Ordering::SeqCst) {
                return;
            }
            if let Some(tx) = started.lock().take() {
                let _ = tx.send(());
            }
            if let Some(rx) = release.lock().take() {
                let _ = rx.recv_timeout(std::time::Duration::from_secs(20));
            }
        }
    };
    let motr = Arc::new(Hooked::new(|| {}, hold));
    let options = MotrOptions {
        inline_max: 100,
        ..MotrOptions::new(IDX)
    };
    let s = Arc::new(MotrStore::open(motr, options).unwrap());
    let k = Key::new("/held");
    s.put(&k, &[1; 1000]).unwrap();
    armed.store(true, Ordering::SeqCst);
    let writer = {
        let (s, k) = (s.clone(), k.clone());
        std::thread::spawn(move || s.put(&k, &[2; 1000]))
    };
    started.recv().unwrap();
    let (got_tx, got) = std::sync::mpsc::channel();
    {
        let (s, k) = (s.clone(), k.clone());
        std::thread::spawn(move || {
            let _ = got_tx.send(s.get(&k));
        });
    }
    // Generous: the read takes microseconds unless it waits for the held write.
    let read = got.recv_timeout(std::time::Duration::from_secs(10));
    release.send(()).unwrap();
    let read = read.expect("the reader waited for the put's object write");
    assert_eq!(read.unwrap(), vec![1; 1000]);
    writer.join().unwrap().unwrap();
    assert_eq!(s.get(&k).unwrap(), vec![2; 1000]);
}
