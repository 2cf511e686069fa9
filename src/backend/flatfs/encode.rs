//! From keys to file names and back (spec §5.4), plus the optional reversible encoding.
//!
//! A flatfs key is valid when it is `/` followed by at least one character of
//! `0-9 A-Z + - _ =`. Such a key `/KEY` is stored in the file `KEY.data`, exactly as upstream.
//!
//! With key encoding on, any other key is stored under the name `~` followed by the RFC 4648
//! base32 encoding, in **lower case** and without padding, of the key's bytes without the leading
//! `/` (the root key `/` becomes just `~`). The `~` cannot appear in a valid upstream key, so an
//! encoded name never collides with a real flatfs key, not even on a case-insensitive file
//! system, and Kubo (which base32-decodes upper-case names) skips such files when it lists blocks.
//! Valid keys are never encoded, so every key has exactly one name.
//!
//! Every name must fit a 255-byte file name with its `.data` extension; longer keys are
//! refused with [`ErrorKind::InvalidKey`] (upstream lets the OS fail instead).

use std::borrow::Cow;

use crate::datastore::{Error, ErrorKind, Key, Result};

/// The extension of every data file.
pub const EXTENSION: &str = ".data";
/// The longest file name the store creates, extension included.
pub const MAX_FILE_NAME: usize = 255;
/// The longest stored name, extension excluded.
pub const MAX_NAME: usize = MAX_FILE_NAME - EXTENSION.len();
/// The first character of an encoded name.
pub const ENCODED_MARKER: char = '~';

/// The longest key, in bytes without its leading `/`, that the encoding can store.
pub const MAX_ENCODED_KEY_BYTES: usize = (MAX_NAME - 1) * 5 / 8;

const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// Whether `key` is a valid upstream flatfs key: `/` then one or more of `0-9 A-Z + - _ =`.
/// (The 255-byte file-name limit is checked separately, when a key is stored.)
pub fn is_valid_key(key: &Key) -> bool {
    is_valid_key_str(key.as_str())
}

fn is_valid_key_str(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 2
        && b[0] == b'/'
        && b[1..]
            .iter()
            .all(|c| matches!(c, b'0'..=b'9' | b'A'..=b'Z' | b'+' | b'-' | b'_' | b'='))
}

/// The stored name of `key` (without `.data`), or [`ErrorKind::InvalidKey`] when the key
/// cannot be stored: outside the alphabet with encoding off, or too long.
pub fn name_for(key: &Key, encode: bool) -> Result<Cow<'_, str>> {
    let s = key.as_str();
    if is_valid_key_str(s) {
        let name = &s[1..];
        if name.len() > MAX_NAME {
            return Err(Error::new(
                ErrorKind::InvalidKey,
                format!(
                    "flatfs: key {key} is too long: {} bytes, at most {MAX_NAME} fit a file name",
                    name.len()
                ),
            ));
        }
        return Ok(Cow::Borrowed(name));
    }
    if !encode {
        return Err(Error::new(
            ErrorKind::InvalidKey,
            format!(
                "flatfs: key {:?} not supported: flatfs keys are one component of \
                 0-9 A-Z + - _ = (open it as flatfs:DIR?encode=true to store any key under a \
                 reversible encoded name)",
                key.as_str()
            ),
        ));
    }
    let payload = &s.as_bytes()[1..];
    if payload.len() > MAX_ENCODED_KEY_BYTES {
        return Err(Error::new(
            ErrorKind::InvalidKey,
            format!(
                "flatfs: key {:?} is too long to encode: {} bytes, at most \
                 {MAX_ENCODED_KEY_BYTES} fit a file name",
                key.as_str(),
                payload.len()
            ),
        ));
    }
    let mut name = String::with_capacity(1 + base32_len(payload.len()));
    name.push(ENCODED_MARKER);
    base32_encode_into(payload, &mut name);
    Ok(Cow::Owned(name))
}

/// The key of a stored name (without `.data`). Names are not validated, as upstream: a plain
/// name gives `Key::new(name)`. With encoding on, a canonical encoded name gives its key back;
/// anything else is returned raw.
pub fn key_for(name: &str, encode: bool) -> Key {
    if encode
        && let Some(rest) = name.strip_prefix(ENCODED_MARKER)
        && let Some(key) = decode_name(rest)
    {
        return key;
    }
    Key::new(name)
}

fn decode_name(rest: &str) -> Option<Key> {
    let bytes = base32_decode(rest)?;
    let text = String::from_utf8(bytes).ok()?;
    let key = Key::from_raw(format!("/{text}")).ok()?;
    // Only the canonical name of a key that needs encoding decodes; this rejects names that
    // would map two ways (a valid key, a non-canonical encoding).
    match name_for(&key, true) {
        Ok(Cow::Owned(n)) if n.len() == rest.len() + 1 && n[1..] == *rest => Some(key),
        _ => None,
    }
}

fn base32_len(bytes: usize) -> usize {
    (bytes * 8).div_ceil(5)
}

fn base32_encode_into(data: &[u8], out: &mut String) {
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    for &b in data {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ALPHABET[((acc >> bits) & 31) as usize]));
        }
        acc &= (1 << bits) - 1;
    }
    if bits > 0 {
        out.push(char::from(ALPHABET[((acc << (5 - bits)) & 31) as usize]));
    }
}

/// Lower-case base32 without padding, for tests and tools.
pub fn base32_encode(data: &[u8]) -> String {
    let mut s = String::with_capacity(base32_len(data.len()));
    base32_encode_into(data, &mut s);
    s
}

/// Decodes lower-case unpadded base32; `None` on any character outside the alphabet or on
/// non-zero trailing bits.
pub fn base32_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 5 / 8);
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    for c in s.bytes() {
        let v = match c {
            b'a'..=b'z' => c - b'a',
            b'2'..=b'7' => c - b'2' + 26,
            _ => return None,
        };
        acc = (acc << 5) | u32::from(v);
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push(((acc >> bits) & 0xff) as u8);
        }
        acc &= (1 << bits) - 1;
    }
    // Leftover bits must be padding (fewer than 5, all zero).
    if bits >= 5 || acc != 0 {
        return None;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// TestKeyIsValid.
    #[test]
    fn upstream_validity_vectors() {
        for k in ["/FOO", "/1BAR1", "/=EMACS-IS-KING="] {
            assert!(is_valid_key(&Key::new(k)), "{k}");
        }
        for k in [
            "/foo/bar",
            "/foo\\bar",
            "/foo\0bar",
            "/=Vim-IS-KING=",
            "/",
            "/FOO/BAR",
        ] {
            assert!(!is_valid_key(&Key::new(k)), "{k:?}");
        }
    }

    /// The refusal names the key as a user wrote it (quoted and escaped), not as `Key(..)`.
    #[test]
    fn a_refused_key_is_named_plainly() {
        let e = name_for(&Key::new("/lower\nx"), false).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains(r#"key "/lower\nx" not supported"#), "{msg}");
        assert!(!msg.contains("Key("), "{msg}");
    }

    #[test]
    fn rfc4648_vectors_in_lower_case() {
        for (plain, enc) in [
            ("", ""),
            ("f", "my"),
            ("fo", "mzxq"),
            ("foo", "mzxw6"),
            ("foob", "mzxw6yq"),
            ("fooba", "mzxw6ytb"),
            ("foobar", "mzxw6ytboi"),
        ] {
            assert_eq!(base32_encode(plain.as_bytes()), enc);
            assert_eq!(base32_decode(enc).unwrap(), plain.as_bytes());
        }
        assert!(base32_decode("MZXW6").is_none(), "upper case is not ours");
        assert!(base32_decode("mz").is_none(), "non-zero trailing bits");
        assert!(base32_decode("m").is_none(), "5 leftover bits");
        assert!(base32_decode("mzx=").is_none());
    }

    #[test]
    fn valid_keys_are_stored_verbatim_in_both_modes() {
        let k = Key::new("/CIQFTFEEHEDF6KLBT32BFAGLXEZL4UWFNWM4LFTLMXQBCERZ6CMLX3Y");
        for encode in [false, true] {
            let n = name_for(&k, encode).unwrap();
            assert_eq!(n, "CIQFTFEEHEDF6KLBT32BFAGLXEZL4UWFNWM4LFTLMXQBCERZ6CMLX3Y");
            assert_eq!(key_for(&n, encode), k);
        }
    }

    #[test]
    fn other_keys_need_encoding_and_round_trip() {
        for k in [
            "/",
            "/foo",
            "/a/b/c",
            "/pins/index/cidRindex/x",
            "/with space",
            "/ünïcödé/ключ",
            "/FOO/BAR",
            "/~",
            "/.hidden",
        ] {
            let key = Key::new(k);
            assert_eq!(
                name_for(&key, false).unwrap_err().kind(),
                ErrorKind::InvalidKey,
                "{k}"
            );
            let name = name_for(&key, true).unwrap();
            assert!(name.starts_with('~'), "{name}");
            assert!(name.len() <= MAX_NAME);
            assert!(
                name[1..]
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b))
            );
            assert_eq!(key_for(&name, true), key, "{k}");
            // Without encoding, the name reads back raw, never as a valid key.
            assert!(!is_valid_key(&key_for(&name, false)));
        }
    }

    #[test]
    fn non_canonical_or_foreign_names_read_back_raw() {
        // An encoding of a valid key is not canonical (valid keys are stored verbatim).
        let fake = format!("~{}", base32_encode(b"FOO"));
        assert_eq!(key_for(&fake, true), Key::new(&fake));
        assert_eq!(key_for("~!!", true), Key::new("~!!"));
        assert_eq!(key_for("foo", true), Key::new("/foo"));
        // A non-clean key: "a//b".
        let unclean = format!("~{}", base32_encode(b"a//b"));
        assert_eq!(key_for(&unclean, true), Key::new(&unclean));
    }

    #[test]
    fn length_limits_give_clear_invalid_key_errors() {
        let max = "x".repeat(MAX_ENCODED_KEY_BYTES);
        let ok = Key::new(format!("/{max}"));
        let name = name_for(&ok, true).unwrap();
        assert!(
            name.len() + EXTENSION.len() <= MAX_FILE_NAME,
            "{}",
            name.len()
        );
        let too_long = Key::new(format!("/{max}x"));
        let err = name_for(&too_long, true).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidKey);
        assert!(err.to_string().contains("too long"), "{err}");

        let plain = Key::new(format!("/{}", "A".repeat(MAX_NAME)));
        assert!(name_for(&plain, false).is_ok());
        let plain = Key::new(format!("/{}", "A".repeat(MAX_NAME + 1)));
        assert_eq!(
            name_for(&plain, true).unwrap_err().kind(),
            ErrorKind::InvalidKey
        );
    }
}
