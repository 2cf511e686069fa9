//! Shard functions and the `SHARDING` file (go-ds-flatfs `shard.go`, spec §5.2–§5.3).
//!
//! A shard function maps a key's file name (the key without its leading `/`, or the encoded
//! name, see [`super::encode`]) to the name of the directory that holds it. The function in use
//! is recorded in `<root>/SHARDING` as one line, `/repo/flatfs/shard/v1/<fun>/<n>` followed by a
//! newline, and is read back leniently (surrounding whitespace ignored).

use std::fmt;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::datastore::{Error, ErrorKind, Result};

/// The name of the file that records the shard function.
pub const SHARDING_FILE: &str = "SHARDING";
/// The informational file written next to `SHARDING` for the default shard function.
pub const README_FILE: &str = "_README";
/// The common prefix of every shard identifier.
pub const SHARD_ID_PREFIX: &str = "/repo/flatfs/shard/";

/// The largest parameter accepted. A shard name longer than a file name cannot work, and a zero
/// parameter would put data files in the root directory, so both are refused.
pub const MAX_SHARD_PARAM: usize = 255;

/// A flatfs shard function. The parameter `n` is the length of the shard directory names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ShardFn {
    /// The first `n` bytes of the name, padded with `_` at the end.
    Prefix(usize),
    /// The last `n` bytes of the name, padded with `_` at the front.
    Suffix(usize),
    /// The `n` bytes before the last byte of the name, padded with `_` at the front. Kubo's
    /// default is `NextToLast(2)`.
    NextToLast(usize),
}

impl ShardFn {
    /// Kubo's default (`IPFS_DEF_SHARD`): `next-to-last/2`.
    pub const IPFS_DEFAULT: ShardFn = ShardFn::NextToLast(2);

    /// The function's name as written in the identifier: `prefix`, `suffix` or `next-to-last`.
    pub fn fun_name(&self) -> &'static str {
        match self {
            ShardFn::Prefix(_) => "prefix",
            ShardFn::Suffix(_) => "suffix",
            ShardFn::NextToLast(_) => "next-to-last",
        }
    }

    /// The parameter `n`.
    pub fn param(&self) -> usize {
        match *self {
            ShardFn::Prefix(n) | ShardFn::Suffix(n) | ShardFn::NextToLast(n) => n,
        }
    }

    /// The identifier, e.g. `/repo/flatfs/shard/v1/next-to-last/2` (without the newline that
    /// the `SHARDING` file adds).
    pub fn id(&self) -> String {
        format!("{SHARD_ID_PREFIX}v1/{}/{}", self.fun_name(), self.param())
    }

    /// Parses an identifier leniently, as upstream does: surrounding whitespace is ignored, the
    /// prefix `/repo/flatfs/shard/` is required, then exactly `v1/<fun>/<n>` with a known
    /// function and a decimal integer. Parameters outside `1..=255` are refused as unusable.
    /// Errors are [`ErrorKind::InvalidArgument`].
    pub fn parse(s: &str) -> Result<ShardFn> {
        let bad = |msg: String| Error::new(ErrorKind::InvalidArgument, msg);
        let s = s.trim();
        if s.is_empty() {
            return Err(bad("flatfs: empty shard identifier".to_owned()));
        }
        let Some(rest) = s.strip_prefix(SHARD_ID_PREFIX) else {
            return Err(bad(format!(
                "flatfs: invalid or missing prefix in shard identifier {s:?} (expected {SHARD_ID_PREFIX}v1/<fun>/<n>)"
            )));
        };
        let parts: Vec<&str> = rest.split('/').collect();
        let [version, fun, param] = parts.as_slice() else {
            return Err(bad(format!("flatfs: invalid shard identifier {s:?}")));
        };
        if *version != "v1" {
            return Err(bad(format!(
                "flatfs: shard identifier {s:?} has version {version:?}, expected \"v1\""
            )));
        }
        let n: i64 = param.parse().map_err(|_| {
            bad(format!(
                "flatfs: shard identifier {s:?} has a non-integer parameter {param:?}"
            ))
        })?;
        let n = usize::try_from(n)
            .ok()
            .filter(|n| (1..=MAX_SHARD_PARAM).contains(n))
            .ok_or_else(|| {
                bad(format!(
                    "flatfs: shard identifier {s:?} has parameter {n}, which must be between 1 and {MAX_SHARD_PARAM}"
                ))
            })?;
        match *fun {
            "prefix" => Ok(ShardFn::Prefix(n)),
            "suffix" => Ok(ShardFn::Suffix(n)),
            "next-to-last" => Ok(ShardFn::NextToLast(n)),
            other => Err(bad(format!(
                "flatfs: unknown shard function {other:?} in {s:?} (expected prefix, suffix or next-to-last)"
            ))),
        }
    }

    /// The shard directory name for a file name (the key without its leading `/`). Works on
    /// bytes; flatfs names are ASCII.
    pub fn dir_for(&self, name: &str) -> String {
        let s = name.as_bytes();
        let out: Vec<u8> = match *self {
            ShardFn::Prefix(n) => s
                .iter()
                .copied()
                .chain(std::iter::repeat(b'_'))
                .take(n)
                .collect(),
            ShardFn::Suffix(n) => {
                let padded: Vec<u8> = std::iter::repeat_n(b'_', n)
                    .chain(s.iter().copied())
                    .collect();
                padded[padded.len() - n..].to_vec()
            }
            ShardFn::NextToLast(n) => {
                let padded: Vec<u8> = std::iter::repeat_n(b'_', n + 1)
                    .chain(s.iter().copied())
                    .collect();
                let end = padded.len() - 1;
                padded[end - n..end].to_vec()
            }
        };
        String::from_utf8_lossy(&out).into_owned()
    }
}

impl fmt::Display for ShardFn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id())
    }
}

impl std::str::FromStr for ShardFn {
    type Err = Error;
    fn from_str(s: &str) -> Result<ShardFn> {
        ShardFn::parse(s)
    }
}

/// Reads `<dir>/SHARDING`. `Ok(None)` when the file does not exist; a malformed file is
/// [`ErrorKind::Corrupt`].
pub(crate) fn read_sharding(dir: &Path) -> Result<Option<ShardFn>> {
    let path = dir.join(SHARDING_FILE);
    // An identifier is a few dozen bytes; a FIFO, a symlink or a huge file is not one.
    match crate::sys::read_small_file(&path, 4096) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            ShardFn::parse(&text).map(Some).map_err(|e| {
                Error::new(
                    ErrorKind::Corrupt,
                    format!("flatfs: {} is malformed: {}", path.display(), e.message()),
                )
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e)
            if crate::sys::is_foreign_file(&e) || e.kind() == std::io::ErrorKind::FileTooLarge =>
        {
            Err(Error::new(
                ErrorKind::Corrupt,
                format!("flatfs: {} is not a shard identifier: {e}", path.display()),
            ))
        }
        Err(e) => Err(Error::io(format!("flatfs: reading {}", path.display()), e)),
    }
}

/// Writes `<dir>/SHARDING` exclusively (`O_EXCL`, mode 0666 minus the umask): the identifier
/// and one newline, then fsyncs it. An existing file is [`ErrorKind::AlreadyExists`].
pub(crate) fn write_sharding(dir: &Path, shard: ShardFn) -> Result<()> {
    let path = dir.join(SHARDING_FILE);
    let ctx = || format!("flatfs: writing {}", path.display());
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o666)
        .open(&path)
        .map_err(|e| Error::io(ctx(), e))?;
    f.write_all(format!("{}\n", shard.id()).as_bytes())
        .map_err(|e| Error::io(ctx(), e))?;
    f.sync_all().map_err(|e| Error::io(ctx(), e))
}

/// Our informational `_README` text. Upstream never reads this file back; the text differs
/// byte-wise from go-ds-flatfs's own, which is harmless (see `docs/FLATFS.md`).
pub const README_TEXT: &str = "\
This directory is a flatfs datastore: a key-value store for content-addressed
blocks, laid out the way go-ds-flatfs (used by Kubo) lays it out.

Each value is one file holding the raw bytes of the value and nothing else.
A key /KEY is stored in the file <SHARD>/KEY.data, where KEY is made of the
characters 0-9 A-Z + - _ = only. For Kubo's blocks, KEY is the upper-case
base32 encoding (RFC 4648, no padding) of the block's multihash.

<SHARD> is computed from KEY by the function recorded in the SHARDING file.
This datastore uses next-to-last/2: drop the last character of KEY and take
the two characters before it, padding short keys with '_' at the front.

Example: the empty UnixFS directory, CID
QmUNLLsPACCz1vLxQVkXqqLX5R1X345qqfHbsf67hvA3Nn, has the key
CIQFTFEEHEDF6KLBT32BFAGLXEZL4UWFNWM4LFTLMXQBCERZ6CMLX3Y and lives in
X3/CIQFTFEEHEDF6KLBT32BFAGLXEZL4UWFNWM4LFTLMXQBCERZ6CMLX3Y.data

Other entries: diskUsage.cache caches the total size, .temp holds scratch
files and is emptied whenever the datastore is opened.

Do not edit or move files here while a program has the datastore open.
";

/// Writes `<dir>/_README` (mode 0444), only for the default shard function, as upstream does.
pub(crate) fn write_readme(dir: &Path, shard: ShardFn) -> Result<()> {
    if shard != ShardFn::IPFS_DEFAULT {
        return Ok(());
    }
    let path = dir.join(README_FILE);
    let ctx = || format!("flatfs: writing {}", path.display());
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o444)
        .open(&path)
        .map_err(|e| Error::io(ctx(), e))?;
    f.write_all(README_TEXT.as_bytes())
        .map_err(|e| Error::io(ctx(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vector table of spec §5.3.
    #[test]
    fn shard_functions_match_the_spec_vectors() {
        let fns = [
            ShardFn::Prefix(2),
            ShardFn::Suffix(2),
            ShardFn::NextToLast(2),
            ShardFn::NextToLast(3),
            ShardFn::NextToLast(1),
            ShardFn::Prefix(5),
        ];
        let rows: &[(&str, [&str; 6])] = &[
            ("QUUX", ["QU", "UX", "UU", "QUU", "U", "QUUX_"]),
            ("A", ["A_", "_A", "__", "___", "_", "A____"]),
            ("AB", ["AB", "AB", "_A", "__A", "A", "AB___"]),
            ("ABC", ["AB", "BC", "AB", "_AB", "B", "ABC__"]),
            (
                "CIQFTFEEHEDF6KLBT32BFAGLXEZL4UWFNWM4LFTLMXQBCERZ6CMLX3Y",
                ["CI", "3Y", "X3", "LX3", "3", "CIQFT"],
            ),
        ];
        for (key, expected) in rows {
            for (f, want) in fns.iter().zip(expected.iter()) {
                assert_eq!(f.dir_for(key), *want, "{f} of {key}");
            }
        }
    }

    #[test]
    fn empty_names_are_all_padding() {
        assert_eq!(ShardFn::Prefix(2).dir_for(""), "__");
        assert_eq!(ShardFn::Suffix(2).dir_for(""), "__");
        assert_eq!(ShardFn::NextToLast(2).dir_for(""), "__");
    }

    #[test]
    fn identifiers_format_exactly() {
        assert_eq!(
            ShardFn::IPFS_DEFAULT.id(),
            "/repo/flatfs/shard/v1/next-to-last/2"
        );
        assert_eq!(ShardFn::Prefix(5).id(), "/repo/flatfs/shard/v1/prefix/5");
        assert_eq!(
            ShardFn::Suffix(3).to_string(),
            "/repo/flatfs/shard/v1/suffix/3"
        );
        assert_eq!(format!("{}\n", ShardFn::IPFS_DEFAULT.id()).len(), 37);
    }

    #[test]
    fn parsing_is_lenient_about_whitespace_and_strict_about_the_rest() {
        for f in [
            ShardFn::Prefix(2),
            ShardFn::Suffix(2),
            ShardFn::NextToLast(2),
            ShardFn::NextToLast(3),
        ] {
            assert_eq!(ShardFn::parse(&f.id()).unwrap(), f);
            assert_eq!(ShardFn::parse(&format!("{}\n", f.id())).unwrap(), f);
            assert_eq!(ShardFn::parse(&format!("  \t{}\r\n\n", f.id())).unwrap(), f);
        }
        // Go's Atoi accepts a sign and leading zeros; the normalised identifier compares equal.
        assert_eq!(
            ShardFn::parse("/repo/flatfs/shard/v1/next-to-last/02").unwrap(),
            ShardFn::NextToLast(2)
        );
        assert_eq!(
            ShardFn::parse("/repo/flatfs/shard/v1/prefix/+4").unwrap(),
            ShardFn::Prefix(4)
        );
        for bad in [
            "",
            "   \n",
            // TestInvalidPrefix
            "/bad/prefix/v1/next-to-last/2",
            "/repo/flatfs/shard/v2/next-to-last/2",
            "/repo/flatfs/shard/v1/middle/2",
            "/repo/flatfs/shard/v1/next-to-last/two",
            "/repo/flatfs/shard/v1/next-to-last",
            "/repo/flatfs/shard/v1/next-to-last/2/extra",
            "/repo/flatfs/shard/v1/next-to-last/0",
            "/repo/flatfs/shard/v1/next-to-last/-1",
            "/repo/flatfs/shard/v1/prefix/256",
            "repo/flatfs/shard/v1/prefix/2",
        ] {
            let err = ShardFn::parse(bad).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{bad:?}");
        }
    }

    #[test]
    fn sharding_file_round_trips_and_is_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_sharding(dir.path()).unwrap(), None);
        write_sharding(dir.path(), ShardFn::IPFS_DEFAULT).unwrap();
        assert_eq!(
            std::fs::read(dir.path().join(SHARDING_FILE)).unwrap(),
            b"/repo/flatfs/shard/v1/next-to-last/2\n"
        );
        assert_eq!(
            read_sharding(dir.path()).unwrap(),
            Some(ShardFn::IPFS_DEFAULT)
        );
        let err = write_sharding(dir.path(), ShardFn::Prefix(2)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::AlreadyExists);
        std::fs::write(dir.path().join(SHARDING_FILE), "garbage").unwrap();
        assert_eq!(
            read_sharding(dir.path()).unwrap_err().kind(),
            ErrorKind::Corrupt
        );
    }
}
