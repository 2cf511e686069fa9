//! Content addressing: CIDs of values, and the datastore keys Kubo gives blocks.
//!
//! Kubo keys a block by its multihash, not its whole CID: the key is `/blocks/` followed by the
//! RFC 4648 base32 encoding (standard alphabet, upper case, no padding) of the multihash bytes.
//! A CIDv0 and a CIDv1 of the same content therefore share one key, and enumerating `/blocks`
//! yields multihashes that are reported as CIDv1 `raw` CIDs.

use cid::Cid;
use multihash::Multihash;
use sha2::{Digest, Sha256};

use crate::datastore::{Error, ErrorKind, Key, Result};

/// The multicodec code of sha2-256.
pub const SHA2_256: u64 = 0x12;
/// The multicodec code of raw binary blocks.
pub const RAW: u64 = 0x55;
/// The multicodec code of dag-pb blocks.
pub const DAG_PB: u64 = 0x70;
/// The namespace Kubo's blockstore uses.
pub const BLOCKS_PREFIX: &str = "/blocks";

const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// RFC 4648 base32, standard alphabet, upper case, without padding.
pub fn base32_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
    let mut buffer: u32 = 0;
    let mut bits = 0;
    for &b in bytes {
        buffer = (buffer << 8) | b as u32;
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(BASE32[((buffer >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(BASE32[((buffer << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// Decodes [`base32_encode`]'s output (padding `=` is accepted and ignored); `None` if the text
/// is not base32.
pub fn base32_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 5 / 8);
    let mut buffer: u32 = 0;
    let mut bits = 0;
    for c in text.trim_end_matches('=').bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'2'..=b'7' => c - b'2' + 26,
            _ => return None,
        };
        buffer = (buffer << 5) | v as u32;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
        }
    }
    // Leftover bits must be zero padding, or the text was not produced by an encoder.
    if bits >= 5 || (buffer & ((1 << bits) - 1)) != 0 {
        return None;
    }
    Some(out)
}

/// The sha2-256 multihash of `data`.
pub fn sha256_multihash(data: &[u8]) -> Multihash<64> {
    let digest = Sha256::digest(data);
    // A 32-byte digest always fits the 64-byte multihash.
    Multihash::wrap(SHA2_256, &digest).unwrap_or_default()
}

/// The CIDv1 (`raw` codec, sha2-256) of `data`, as `ipfs add --raw-leaves` of a single block
/// would give it.
pub fn raw_cid(data: &[u8]) -> Cid {
    Cid::new_v1(RAW, sha256_multihash(data))
}

/// The datastore key Kubo uses for a block with this multihash: `/blocks/<BASE32>`.
pub fn block_key(hash: &Multihash<64>) -> Key {
    Key::new(format!(
        "{BLOCKS_PREFIX}/{}",
        base32_encode(&hash.to_bytes())
    ))
}

/// The datastore key of the block a CID names (CIDv0 or CIDv1, any base).
pub fn cid_to_key(cid_text: &str) -> Result<Key> {
    let cid = Cid::try_from(cid_text).map_err(|e| {
        Error::new(
            ErrorKind::InvalidArgument,
            format!("{cid_text:?} is not a CID: {e}"),
        )
    })?;
    Ok(block_key(cid.hash()))
}

/// The CIDv1 `raw` CID of a `/blocks/<BASE32>` key, or `None` if the key is not a block key.
pub fn key_to_cid(key: &Key) -> Option<Cid> {
    let name = key.strip_prefix(&Key::new(BLOCKS_PREFIX))?;
    if name.depth() != 1 {
        return None;
    }
    let bytes = base32_decode(name.base_namespace())?;
    let hash = Multihash::<64>::from_bytes(&bytes).ok()?;
    Some(Cid::new_v1(RAW, hash))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_empty_unixfs_directory_has_kubos_key() {
        let block = [0x0a, 0x02, 0x08, 0x01];
        let hash = sha256_multihash(&block);
        assert_eq!(
            hex(hash.digest()),
            "59948439065f29619ef41280cbb932be52c56d99c5966b65e0111239f098bbef"
        );
        let key = block_key(&hash);
        assert_eq!(
            key.as_str(),
            "/blocks/CIQFTFEEHEDF6KLBT32BFAGLXEZL4UWFNWM4LFTLMXQBCERZ6CMLX3Y"
        );
        assert_eq!(
            cid_to_key("QmUNLLsPACCz1vLxQVkXqqLX5R1X345qqfHbsf67hvA3Nn").unwrap(),
            key
        );
        let cid = key_to_cid(&key).unwrap();
        assert_eq!(cid.hash(), &hash);
        assert_eq!(cid_to_key(&cid.to_string()).unwrap(), key);
    }

    #[test]
    fn base32_matches_rfc4648_vectors() {
        for (plain, enc) in [
            ("", ""),
            ("f", "MY"),
            ("fo", "MZXQ"),
            ("foo", "MZXW6"),
            ("foob", "MZXW6YQ"),
            ("fooba", "MZXW6YTB"),
            ("foobar", "MZXW6YTBOI"),
        ] {
            assert_eq!(base32_encode(plain.as_bytes()), enc);
            assert_eq!(base32_decode(enc).unwrap(), plain.as_bytes());
        }
        assert!(base32_decode("mzxw6").is_none());
        assert!(base32_decode("MZ").is_none(), "non-zero trailing bits");
    }

    #[test]
    fn non_block_keys_have_no_cid() {
        assert!(key_to_cid(&Key::new("/pins/x")).is_none());
        assert!(key_to_cid(&Key::new("/blocks/a/b")).is_none());
        assert!(key_to_cid(&Key::new("/blocks/NOTBASE32!")).is_none());
        assert!(cid_to_key("not a cid").is_err());
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }
}
