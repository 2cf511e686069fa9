//! Keys as BlobFS file names, and back.
//!
//! BlobFS names a file by its blob's `name` xattr: a NUL-terminated string of at most
//! [`NAME_MAX`] bytes, flat (a `/` is an ordinary byte). The mapping:
//!
//! * a key of at most 255 bytes, without NUL, outside the reserved [`RESERVED`] prefix, is its
//!   own name (`/blocks/CIQA...` is the BlobFS file `/blocks/CIQA...`);
//! * any other key is named `/.dsfs-h/<sha2-256 of the key, hex>` and the key itself is kept in
//!   the blob's xattrs `dsfs_key.0`, `dsfs_key.1`, ... (pieces of at most [`KEY_PIECE`] bytes,
//!   each fitting one metadata page);
//! * `/.dsfs-tmp/<n>` names a value being written (a leftover after a crash, removed at open);
//! * `/.dsfs-redo/<n>` names the redo record of an in-place commit (replayed or removed at
//!   open).
//!
//! So every key has exactly one name, and a name with its blob's xattrs gives the key back.

use sha2::Digest;

use crate::datastore::Key;

/// The longest BlobFS name (`SPDK_FILE_NAME_MAX`).
pub const NAME_MAX: usize = 255;
/// Names under this prefix are dsfs's own.
pub const RESERVED: &str = "/.dsfs-";
/// The prefix of hashed names.
pub const HASHED: &str = "/.dsfs-h/";
/// The prefix of values being written.
pub const TEMP: &str = "/.dsfs-tmp/";
/// The prefix of redo records of in-place commits (see `redo.rs`).
pub const REDO: &str = "/.dsfs-redo/";
/// The xattr prefix of a hashed name's key pieces.
pub const KEY_XATTR: &str = "dsfs_key.";
/// The size of one key piece.
pub const KEY_PIECE: usize = 3072;

/// The BlobFS name of `key`, and the key pieces to store beside it (none for a key that is its
/// own name).
pub fn name_of(key: &Key) -> (String, Vec<Vec<u8>>) {
    let k = key.as_str();
    if k.len() <= NAME_MAX && !k.contains('\0') && !k.starts_with(RESERVED) {
        return (k.to_owned(), Vec::new());
    }
    let digest = sha2::Sha256::digest(k.as_bytes());
    let mut name = String::with_capacity(HASHED.len() + 64);
    name.push_str(HASHED);
    for b in digest.iter() {
        name.push_str(&format!("{b:02x}"));
    }
    let pieces = k.as_bytes().chunks(KEY_PIECE).map(<[u8]>::to_vec).collect();
    (name, pieces)
}

/// The xattr name of key piece `n`.
pub fn key_piece_xattr(n: usize) -> String {
    format!("{KEY_XATTR}{n}")
}

/// What a blob's `name` xattr says.
#[derive(Debug, PartialEq, Eq)]
pub enum Named {
    /// The value of this key (a plain name).
    Key(Key),
    /// A hashed name: the key is in the blob's key pieces.
    Hashed(String),
    /// A value being written when dsfs stopped.
    Temp,
    /// A redo record of an in-place commit.
    Redo,
    /// A name that no key maps to (BlobFS allows names that are not clean keys, such as
    /// `a//b` or names without a leading `/`).
    Foreign,
}

/// Reads a `name` xattr value (with or without its NUL terminator).
pub fn parse_name(raw: &[u8]) -> Named {
    let raw = raw.strip_suffix(b"\0").unwrap_or(raw);
    let Ok(name) = std::str::from_utf8(raw) else {
        return Named::Foreign;
    };
    if name.starts_with(TEMP) {
        return Named::Temp;
    }
    if name.starts_with(REDO) {
        return Named::Redo;
    }
    if name.starts_with(HASHED) {
        return Named::Hashed(name.to_owned());
    }
    if name.starts_with(RESERVED) || name.contains('\0') || !Key::is_clean(name) {
        return Named::Foreign;
    }
    Named::Key(Key::new(name))
}

/// The key of a hashed name from its pieces, if they hash to the name.
pub fn key_of_hashed(name: &str, pieces: &[Vec<u8>]) -> Option<Key> {
    let bytes: Vec<u8> = pieces.concat();
    let text = String::from_utf8(bytes).ok()?;
    if !Key::is_clean(&text) {
        return None;
    }
    let key = Key::new(&text);
    (name_of(&key).0 == name).then_some(key)
}

/// The name xattr's bytes: the name and its NUL, as BlobFS writes it.
pub fn name_xattr(name: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(name.len() + 1);
    v.extend_from_slice(name.as_bytes());
    v.push(0);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_keys_are_their_own_names() {
        let key = Key::new("/blocks/CIQABC");
        assert_eq!(name_of(&key), ("/blocks/CIQABC".to_owned(), Vec::new()));
        assert_eq!(
            parse_name(&name_xattr("/blocks/CIQABC")),
            Named::Key(key.clone())
        );
    }

    #[test]
    fn long_reserved_and_nul_keys_are_hashed_and_come_back() {
        let long = Key::new(format!("/{}", "x".repeat(7000)));
        let reserved = Key::new("/.dsfs-tmp/1");
        let at_limit = Key::new(format!("/{}", "y".repeat(254)));
        let over = Key::new(format!("/{}", "y".repeat(255)));
        assert_eq!(name_of(&at_limit).0, at_limit.as_str());
        for key in [long, reserved, over] {
            let (name, pieces) = name_of(&key);
            assert!(name.len() <= NAME_MAX && name.starts_with(HASHED), "{name}");
            assert!(pieces.iter().all(|p| p.len() <= KEY_PIECE));
            let Named::Hashed(n) = parse_name(&name_xattr(&name)) else {
                panic!("not hashed: {name}");
            };
            assert_eq!(key_of_hashed(&n, &pieces), Some(key.clone()));
            // Pieces of another key do not pass for this name.
            assert_eq!(key_of_hashed(&n, &[b"/other".to_vec()]), None);
        }
    }

    #[test]
    fn foreign_names_are_recognised() {
        assert_eq!(parse_name(b"noslash\0"), Named::Foreign);
        assert_eq!(parse_name(b"/a//b\0"), Named::Foreign);
        assert_eq!(parse_name(b"/.dsfs-other\0"), Named::Foreign);
        assert_eq!(parse_name(b"/.dsfs-tmp/9\0"), Named::Temp);
        assert_eq!(parse_name(b"/.dsfs-redo/9\0"), Named::Redo);
        assert_eq!(parse_name(&[b'/', 0xff, 0]), Named::Foreign);
    }
}
