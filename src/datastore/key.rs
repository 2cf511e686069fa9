//! Hierarchical datastore keys with go-datastore's semantics.
//!
//! A [`Key`] is a cleaned, slash-separated path such as `/blocks/CIQ...`. Cleaning follows Go's
//! `path.Clean` applied to a rooted path, so `//a/./b/../c/` becomes `/a/c` and `..` can never
//! climb above `/`. Keys here are UTF-8 strings: go-datastore allows arbitrary bytes, but every
//! key a real IPFS node writes is ASCII, and the filesystem layer escapes the few POSIX name bytes
//! that are not UTF-8 (see `docs/SEMANTICS.md`).
//!
//! Two orders exist and they differ: [`Key::compare`] is component-wise (go-datastore's
//! `Key.Compare`), while the derived `Ord` is bytewise on the string, which is the order that
//! queries, `OrderByKey` and every sorted store (redb) use.

use std::cmp::Ordering;
use std::fmt;

use super::error::{Error, ErrorKind};

/// A cleaned hierarchical key. Always starts with `/`; never ends with `/` unless it is the root;
/// has no empty, `.` or `..` components.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(String);

/// Go's `path.Clean` for a path that is known to start with `/`.
fn clean_rooted(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    if parts.is_empty() {
        return "/".to_owned();
    }
    let mut out = String::with_capacity(path.len());
    for part in parts {
        out.push('/');
        out.push_str(part);
    }
    out
}

impl Key {
    /// go-datastore's `NewKey`: cleans `s` as a rooted path. An empty string gives `/`.
    pub fn new(s: impl AsRef<str>) -> Key {
        let s = s.as_ref();
        if Self::is_clean(s) {
            return Key(s.to_owned());
        }
        Key(clean_rooted(s))
    }

    /// The root key `/`.
    pub fn root() -> Key {
        Key("/".to_owned())
    }

    /// go-datastore's `RawKey` made safe: accepts `s` only when it is already in clean form and
    /// returns [`ErrorKind::InvalidKey`] otherwise (upstream panics). An empty string gives `/`.
    pub fn from_raw(s: impl Into<String>) -> Result<Key, Error> {
        let s = s.into();
        if s.is_empty() {
            return Ok(Key::root());
        }
        if Self::is_clean(&s) {
            Ok(Key(s))
        } else {
            Err(Error::new(
                ErrorKind::InvalidKey,
                format!("{s:?} is not a clean key"),
            ))
        }
    }

    /// Whether `s` is already a clean key: rooted, no trailing slash, no empty, `.` or `..`
    /// components.
    pub fn is_clean(s: &str) -> bool {
        if s == "/" {
            return true;
        }
        if !s.starts_with('/') || s.ends_with('/') {
            return false;
        }
        s[1..]
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
    }

    /// `KeyWithNamespaces`: `Key::new` of the parts joined with `/`.
    pub fn with_namespaces<I, S>(parts: I) -> Key
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let joined: Vec<String> = parts.into_iter().map(|p| p.as_ref().to_owned()).collect();
        Key::new(joined.join("/"))
    }

    /// The key as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The key's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// Consumes the key, returning its string.
    pub fn into_string(self) -> String {
        self.0
    }

    /// Whether this is the root key `/`.
    pub fn is_root(&self) -> bool {
        self.0 == "/"
    }

    /// go-datastore's `List()`/`Namespaces()`: the components. The root gives `[""]`, a single
    /// empty component, exactly as upstream.
    pub fn list(&self) -> Vec<&str> {
        self.0[1..].split('/').collect()
    }

    /// Iterates over the components; the root yields nothing (unlike [`Key::list`]).
    pub fn components(&self) -> impl DoubleEndedIterator<Item = &str> + '_ {
        let rest = if self.is_root() { "" } else { &self.0[1..] };
        rest.split('/').filter(|c| !c.is_empty())
    }

    /// The number of components; the root has none.
    pub fn depth(&self) -> usize {
        if self.is_root() {
            0
        } else {
            self.0.bytes().filter(|b| *b == b'/').count()
        }
    }

    /// The last component (`BaseNamespace`); `""` for the root.
    pub fn base_namespace(&self) -> &str {
        match self.0.rfind('/') {
            Some(i) => &self.0[i + 1..],
            None => "",
        }
    }

    /// The first component (`RootNamespace`); `""` for the root.
    pub fn root_namespace(&self) -> &str {
        let rest = &self.0[1..];
        match rest.find('/') {
            Some(i) => &rest[..i],
            None => rest,
        }
    }

    /// `IsTopLevel`: exactly one element in [`Key::list`], which holds for `/a` and for `/`.
    pub fn is_top_level(&self) -> bool {
        !self.0[1..].contains('/')
    }

    /// `Type()`: the namespace type of the last component (`Actor` in `Actor:JohnCleese`).
    pub fn type_(&self) -> &str {
        namespace_type(self.base_namespace())
    }

    /// `Name()`: the namespace value of the last component (`JohnCleese` in `Actor:JohnCleese`).
    pub fn name(&self) -> &str {
        namespace_value(self.base_namespace())
    }

    /// `Path()`: the parent joined with the type; the parent when there is no type.
    pub fn path(&self) -> Key {
        Key::new(format!("{}/{}", self.parent().0, self.type_()))
    }

    /// `Instance(s)`: appends `:s` to the last component.
    pub fn instance(&self, s: &str) -> Key {
        Key::new(format!("{}:{}", self.0, s))
    }

    /// `Parent()`: the key without its last component; `/` for top-level keys and for `/`.
    pub fn parent(&self) -> Key {
        match self.0.rfind('/') {
            Some(0) | None => Key::root(),
            Some(i) => Key(self.0[..i].to_owned()),
        }
    }

    /// `Child(k2)`: concatenation without cleaning (both are clean, so the result is too).
    pub fn child(&self, other: &Key) -> Key {
        if self.is_root() {
            other.clone()
        } else if other.is_root() {
            self.clone()
        } else {
            Key(format!("{}{}", self.0, other.0))
        }
    }

    /// `ChildString(s)`: `Key::new(self + "/" + s)`. Because the result is cleaned, `..` in `s`
    /// can climb: `/a` with `../b` gives `/b`.
    pub fn child_string(&self, s: &str) -> Key {
        Key::new(format!("{}/{}", self.0, s))
    }

    /// Appends one component verbatim. Returns [`ErrorKind::InvalidKey`] when `name` is empty,
    /// `.`, `..` or contains `/`, so the result is always a strict child of `self`.
    pub fn join_component(&self, name: &str) -> Result<Key, Error> {
        if name.is_empty() || name == "." || name == ".." || name.contains('/') {
            return Err(Error::new(
                ErrorKind::InvalidKey,
                format!("{name:?} is not a valid key component"),
            ));
        }
        Ok(if self.is_root() {
            Key(format!("/{name}"))
        } else {
            Key(format!("{}/{name}", self.0))
        })
    }

    /// `Reverse()`: the components in reverse order.
    pub fn reverse(&self) -> Key {
        let mut parts = self.list();
        parts.reverse();
        Key::with_namespaces(parts)
    }

    /// `IsAncestorOf`: a strict, component-aligned prefix test. `/A` is an ancestor of `/A/B`
    /// but not of `/AB` nor of `/A`; `/` is an ancestor of every key but itself.
    pub fn is_ancestor_of(&self, other: &Key) -> bool {
        if other.0.len() <= self.0.len() {
            return false;
        }
        if self.is_root() {
            return true;
        }
        other.0.starts_with(&self.0) && other.0.as_bytes()[self.0.len()] == b'/'
    }

    /// `IsDescendantOf`: `other.is_ancestor_of(self)`.
    pub fn is_descendant_of(&self, other: &Key) -> bool {
        other.is_ancestor_of(self)
    }

    /// `Compare`: component-wise, each component bytewise; a proper prefix sorts first.
    /// This is *not* the derived `Ord`, which is bytewise on the whole string.
    pub fn compare(&self, other: &Key) -> Ordering {
        let a = self.list();
        let b = other.list();
        for (x, y) in a.iter().zip(b.iter()) {
            match x.as_bytes().cmp(y.as_bytes()) {
                Ordering::Equal => {}
                ord => return ord,
            }
        }
        a.len().cmp(&b.len())
    }

    /// `Less`: `compare == Less`.
    pub fn less(&self, other: &Key) -> bool {
        self.compare(other) == Ordering::Less
    }

    /// The key with the ancestor `prefix` removed, re-rooted: `/a/b/c` minus `/a` is `/b/c`.
    /// Returns `None` unless `prefix` is an ancestor of `self` (or the root).
    pub fn strip_prefix(&self, prefix: &Key) -> Option<Key> {
        if prefix.is_root() {
            return Some(self.clone());
        }
        if prefix.is_ancestor_of(self) {
            Some(Key(self.0[prefix.0.len()..].to_owned()))
        } else {
            None
        }
    }

    /// `RandomKey()`: 32 lower-case hex characters from the OS's randomness.
    pub fn random() -> Key {
        let mut bytes = [0u8; 16];
        fill_random(&mut bytes);
        let mut s = String::with_capacity(33);
        s.push('/');
        for b in bytes {
            s.push_str(&format!("{b:02x}"));
        }
        Key(s)
    }
}

/// Fills `buf` with unpredictable bytes: SHA-256 of a 32-byte secret read once per process
/// from the kernel's random source, the process id and a counter (so no two calls, and no two
/// processes forked from one, ever get the same bytes). No system call per call: the tiered
/// store names a new value's file per create, and three system calls (open, read, close of
/// `/dev/urandom`) each time were a measurable part of a create. If the source cannot be read,
/// the secret is a time-and-address mix, which still keeps keys unique within a process.
pub(crate) fn fill_random(buf: &mut [u8]) {
    use sha2::{Digest, Sha256};
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
    static SECRET: OnceLock<[u8; 32]> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let secret = SECRET.get_or_init(|| {
        use std::io::Read;
        let mut s = [0u8; 32];
        if let Ok(mut f) = std::fs::File::open("/dev/urandom")
            && f.read_exact(&mut s).is_ok()
        {
            return s;
        }
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let here = &s as *const _ as usize as u128;
        let mut h = Sha256::new();
        h.update(nanos.to_le_bytes());
        h.update(here.to_le_bytes());
        s.copy_from_slice(&h.finalize());
        s
    });
    let pid = std::process::id();
    for chunk in buf.chunks_mut(32) {
        let n = COUNTER.fetch_add(1, AtomicOrdering::Relaxed);
        let mut h = Sha256::new();
        h.update(secret);
        h.update(pid.to_le_bytes());
        h.update(n.to_le_bytes());
        let out = h.finalize();
        chunk.copy_from_slice(&out[..chunk.len()]);
    }
}

/// `NamespaceType`: everything before the last `:`, or `""` when there is no `:`.
pub fn namespace_type(ns: &str) -> &str {
    match ns.rfind(':') {
        Some(i) => &ns[..i],
        None => "",
    }
}

/// `NamespaceValue`: everything after the last `:`, or the whole of `ns`.
pub fn namespace_value(ns: &str) -> &str {
    match ns.rfind(':') {
        Some(i) => &ns[i + 1..],
        None => ns,
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({:?})", self.0)
    }
}

impl AsRef<str> for Key {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Key {
    fn from(s: &str) -> Key {
        Key::new(s)
    }
}

impl From<String> for Key {
    fn from(s: String) -> Key {
        Key::new(s)
    }
}

impl std::str::FromStr for Key {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Key, Self::Err> {
        Ok(Key::new(s))
    }
}

impl serde::Serialize for Key {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Key {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Key, D::Error> {
        let s = String::deserialize(d)?;
        Ok(Key::new(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Go's `path.Clean("/" + s)` written independently of [`clean_rooted`], used as the oracle
    /// in the `TestKeyBasic` port.
    fn go_clean_rooted(s: &str) -> String {
        let mut stack: Vec<String> = Vec::new();
        for seg in format!("/{s}").split('/') {
            if seg.is_empty() || seg == "." {
                continue;
            }
            if seg == ".." {
                stack.pop();
            } else {
                stack.push(seg.to_string());
            }
        }
        format!("/{}", stack.join("/"))
    }

    #[test]
    fn cleaning_and_accessors_match_the_spec_table() {
        // (input, cleaned, parent, name, type, path, list)
        type Row<'a> = (
            &'a str,
            &'a str,
            &'a str,
            &'a str,
            &'a str,
            &'a str,
            &'a [&'a str],
        );
        let rows: &[Row] = &[
            ("", "/", "/", "", "", "/", &[""]),
            ("/", "/", "/", "", "", "/", &[""]),
            ("a", "/a", "/", "a", "", "/", &["a"]),
            ("a/", "/a", "/", "a", "", "/", &["a"]),
            ("/a/", "/a", "/", "a", "", "/", &["a"]),
            ("//a//b//", "/a/b", "/a", "b", "", "/a", &["a", "b"]),
            ("/a/./b", "/a/b", "/a", "b", "", "/a", &["a", "b"]),
            ("/a/../b", "/b", "/", "b", "", "/", &["b"]),
            ("/a/b/..", "/a", "/", "a", "", "/", &["a"]),
            ("..", "/", "/", "", "", "/", &[""]),
            ("/..", "/", "/", "", "", "/", &[""]),
            (".", "/", "/", "", "", "/", &[""]),
            ("./", "/", "/", "", "", "/", &[""]),
            ("../a", "/a", "/", "a", "", "/", &["a"]),
            ("/../../a", "/a", "/", "a", "", "/", &["a"]),
            (
                "/a//b/c/",
                "/a/b/c",
                "/a/b",
                "c",
                "",
                "/a/b",
                &["a", "b", "c"],
            ),
            ("a:b", "/a:b", "/", "b", "a", "/a", &["a:b"]),
            (
                "/Comedy/MontyPython/Actor:JohnCleese",
                "/Comedy/MontyPython/Actor:JohnCleese",
                "/Comedy/MontyPython",
                "JohnCleese",
                "Actor",
                "/Comedy/MontyPython/Actor",
                &["Comedy", "MontyPython", "Actor:JohnCleese"],
            ),
            (
                "/a/b:c:d",
                "/a/b:c:d",
                "/a",
                "d",
                "b:c",
                "/a/b:c",
                &["a", "b:c:d"],
            ),
            ("/a/b:", "/a/b:", "/a", "", "b", "/a/b", &["a", "b:"]),
            ("/:b", "/:b", "/", "b", "", "/", &[":b"]),
            (
                "/ a /b ",
                "/ a /b ",
                "/ a ",
                "b ",
                "",
                "/ a ",
                &[" a ", "b "],
            ),
            ("/a\\b", "/a\\b", "/", "a\\b", "", "/", &["a\\b"]),
            ("/.../x", "/.../x", "/...", "x", "", "/...", &["...", "x"]),
            (
                "/foo.bar/.x",
                "/foo.bar/.x",
                "/foo.bar",
                ".x",
                "",
                "/foo.bar",
                &["foo.bar", ".x"],
            ),
        ];
        for (input, clean, parent, name, ty, path, list) in rows {
            let k = Key::new(input);
            assert_eq!(k.as_str(), *clean, "clean of {input:?}");
            assert_eq!(k.parent().as_str(), *parent, "parent of {input:?}");
            assert_eq!(k.name(), *name, "name of {input:?}");
            assert_eq!(k.type_(), *ty, "type of {input:?}");
            assert_eq!(k.path().as_str(), *path, "path of {input:?}");
            assert_eq!(k.list(), *list, "list of {input:?}");
        }
    }

    #[test]
    fn further_vectors_from_the_spec() {
        assert_eq!(Key::new("/").instance("x").as_str(), "/:x");
        assert_eq!(Key::new("/a").instance("x").as_str(), "/a:x");
        assert_eq!(Key::new("/a").child_string("../b").as_str(), "/b");
        assert_eq!(Key::new("/").child_string("x").as_str(), "/x");
        assert_eq!(Key::new("/a").child_string("b/c/").as_str(), "/a/b/c");
        assert_eq!(Key::new("/a").child_string("").as_str(), "/a");
        assert_eq!(Key::new("/a").child(&Key::new("/b/c")).as_str(), "/a/b/c");
        assert_eq!(Key::new("/").child(&Key::new("/b")).as_str(), "/b");
        assert_eq!(Key::new("/a").child(&Key::new("/")).as_str(), "/a");
        assert!(Key::new("/A").is_ancestor_of(&Key::new("/A/B")));
        assert!(!Key::new("/A").is_ancestor_of(&Key::new("/AB")));
        assert!(Key::new("/").is_ancestor_of(&Key::new("/A")));
        assert!(!Key::new("/A").is_ancestor_of(&Key::new("/A")));
        assert!(!Key::new("/").is_ancestor_of(&Key::new("/")));
        assert_eq!(Key::new("/").compare(&Key::new("/a")), Ordering::Less);
        assert_eq!(Key::new("/a").compare(&Key::new("/a/b")), Ordering::Less);
        assert_eq!(
            Key::new("/ab").compare(&Key::new("/a/b")),
            Ordering::Greater
        );
        assert_eq!(Key::new("/A").compare(&Key::new("/a")), Ordering::Less);
    }

    #[test]
    fn component_order_differs_from_byte_order() {
        let slash = Key::new("/a/b");
        let dash = Key::new("/a-b");
        assert_eq!(slash.compare(&dash), Ordering::Less);
        assert_eq!(slash.cmp(&dash), Ordering::Greater);
    }

    #[test]
    fn key_basic_port() {
        let inputs = [
            "",
            "abcde",
            "disahfidsalfhduisaufidsail",
            "/fdisahfodisa/fdsa/fdsafdsafdsafdsa/fdsafdsa/",
            "4215432143214321432143214321",
            "/fdisaha////fdsa////fdsafdsafdsafdsa/fdsafdsa/",
            "abcde:fdsfd",
            "disahfidsalfhduisaufidsail:fdsa",
            "/fdisahfodisa/fdsa/fdsafdsafdsafdsa/fdsafdsa/:",
            "4215432143214321432143214321:",
            "fdisaha////fdsa////fdsafdsafdsafdsa/fdsafdsa/f:fdaf",
        ];
        for s in inputs {
            let fixed = go_clean_rooted(s);
            let namespaces: Vec<&str> = fixed[1..].split('/').collect();
            let last = *namespaces.last().unwrap();
            let (lnstype, lnsvalue) = match last.rfind(':') {
                Some(i) => (&last[..i], &last[i + 1..]),
                None => ("", last),
            };
            let k = Key::new(s);
            assert_eq!(k.as_str(), fixed);
            assert_eq!(k, Key::new(k.as_str()));
            assert_eq!(k.name(), lnsvalue);
            assert_eq!(k.type_(), lnstype);
            assert_eq!(
                k.path().as_str(),
                go_clean_rooted(&format!("{}/{}", k.parent(), lnstype))
            );
            assert_eq!(k.instance("inst").as_str(), format!("{fixed}:inst"));
            let child = k.child(&Key::new("cchildd"));
            assert_eq!(child.as_str(), go_clean_rooted(&format!("{fixed}/cchildd")));
            assert_eq!(k.child_string("cchildd"), child);
            assert_eq!(child.parent(), k);
            let want_parent = format!("/{}", namespaces[..namespaces.len() - 1].join("/"));
            assert_eq!(k.parent().as_str(), want_parent);
            assert_eq!(k.list(), namespaces);
            assert_ne!(k, Key::new(format!("/fdsafdsa/{s}")));
            assert!(!k.less(&k.parent()));
            assert!(k.less(&k.child_string("foo")));
        }
    }

    #[test]
    fn key_ancestry_port() {
        let k1 = Key::new("/A/B/C");
        let k2 = Key::new("/A/B/C/D");
        let k3 = Key::new("/AB");
        let k4 = Key::new("/A");
        assert!(k1.is_ancestor_of(&k2));
        assert!(k2.is_descendant_of(&k1));
        assert!(k4.is_ancestor_of(&k2));
        assert!(k4.is_ancestor_of(&k1));
        assert!(!k4.is_descendant_of(&k2));
        assert!(!k4.is_descendant_of(&k1));
        assert!(!k3.is_descendant_of(&k4));
        assert!(!k4.is_ancestor_of(&k3));
        assert!(k2.is_descendant_of(&k4));
        assert!(k1.is_descendant_of(&k4));
        assert!(!k2.is_ancestor_of(&k4));
        assert!(!k1.is_ancestor_of(&k4));
        assert!(!k2.is_ancestor_of(&k2));
        assert!(!k1.is_ancestor_of(&k1));
        assert_eq!(k1.child(&Key::new("D")), k2);
        assert_eq!(k1.child_string("D"), k2);
        assert_eq!(k1, k2.parent());
        assert_eq!(k1.path(), k2.parent().path());
    }

    #[test]
    fn types_follow_the_last_component() {
        let k1 = Key::new("/A/B/C:c");
        let k2 = Key::new("/A/B/C:c/D:d");
        assert!(k1.is_ancestor_of(&k2));
        assert_eq!(k1.type_(), "C");
        assert_eq!(k2.type_(), "D");
    }

    #[test]
    fn fill_random_never_repeats_a_block_within_or_across_calls() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let mut buf = [0u8; 80];
            fill_random(&mut buf);
            for chunk in buf.chunks(16) {
                assert!(seen.insert(chunk.to_vec()), "a 16-byte block repeated");
            }
        }
    }

    #[test]
    fn random_keys_do_not_repeat() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            let k = Key::random();
            assert_eq!(k.as_str().len(), 33);
            assert!(
                k.as_str()[1..]
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            );
            assert!(seen.insert(k));
        }
    }

    #[test]
    fn json_round_trip_and_empty_string_is_root() {
        let k = Key::new("/a/b/c");
        let j = serde_json::to_string(&k).unwrap();
        assert_eq!(j, "\"/a/b/c\"");
        assert_eq!(serde_json::from_str::<Key>(&j).unwrap(), k);
        let q = Key::new("/a\"b");
        assert_eq!(serde_json::to_string(&q).unwrap(), r#""/a\"b""#);
        assert_eq!(serde_json::from_str::<Key>("\"\"").unwrap(), Key::root());
        assert!(serde_json::from_str::<Key>("").is_err());
    }

    #[test]
    fn root_namespace_is_the_first_component() {
        assert_eq!(Key::new("/").root_namespace(), "");
        assert_eq!(Key::new("/Comedy").root_namespace(), "Comedy");
        assert_eq!(
            Key::new("/Comedy:MontyPython").root_namespace(),
            "Comedy:MontyPython"
        );
        assert_eq!(Key::new("/a/b").root_namespace(), "a");
    }

    #[test]
    fn raw_keys_must_already_be_clean() {
        assert_eq!(Key::from_raw("").unwrap(), Key::root());
        assert!(Key::from_raw("/a/b").is_ok());
        for bad in ["a", "/a/", "/a//b", "/a/./b", "/a/.."] {
            assert_eq!(
                Key::from_raw(bad).unwrap_err().kind(),
                ErrorKind::InvalidKey,
                "{bad}"
            );
        }
    }

    #[test]
    fn join_component_never_escapes_the_parent() {
        let k = Key::new("/a");
        assert_eq!(k.join_component("b").unwrap().as_str(), "/a/b");
        assert_eq!(Key::root().join_component("b").unwrap().as_str(), "/b");
        for bad in ["", ".", "..", "x/y"] {
            assert!(k.join_component(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn components_depth_and_strip_prefix() {
        let k = Key::new("/a/b/c");
        assert_eq!(k.components().collect::<Vec<_>>(), ["a", "b", "c"]);
        assert_eq!(Key::root().components().count(), 0);
        assert_eq!(k.depth(), 3);
        assert_eq!(Key::root().depth(), 0);
        assert_eq!(k.strip_prefix(&Key::new("/a")).unwrap().as_str(), "/b/c");
        assert_eq!(k.strip_prefix(&Key::root()).unwrap(), k);
        assert!(k.strip_prefix(&Key::new("/a/b/c")).is_none());
        assert!(k.strip_prefix(&Key::new("/ab")).is_none());
        assert_eq!(Key::new("/a/b").reverse().as_str(), "/b/a");
        assert!(Key::new("/a").is_top_level());
        assert!(Key::root().is_top_level());
        assert!(!k.is_top_level());
    }
}
