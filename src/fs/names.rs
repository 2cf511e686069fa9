//! File names and key components.
//!
//! A key component is any UTF-8 string without `/` (and not `.`, `..` or empty); a POSIX name
//! is any byte string without `/` and NUL, at most 255 bytes. The mapping is the identity for
//! every UTF-8 name, with two reserved spellings:
//!
//! * [`VALUE_NAME`] (`.dsfs.value`) inside a directory stands for the value of the directory's
//!   own key, for keys that hold a value and have children (go-datastore allows both);
//! * names starting with [`ESCAPE_PREFIX`] (`.dsfs.esc.`) carry a percent-encoded component: the
//!   spelling of components that contain NUL, or that would themselves read as reserved names;
//! * names starting with [`LONG_PREFIX`] (`.dsfs.long.`) stand for components whose spelling
//!   is longer than [`NAME_MAX`] (keys written through the datastore API may have components
//!   of any length): `.dsfs.long.<32 hex digits>.<the component's start>`, where the hex digits
//!   are the first 128 bits of the component's SHA-256. Such a name cannot hold the whole
//!   component, so resolving it means finding the entry of the directory whose component
//!   hashes to it (a scan of that one directory, made only for these names). The file can be
//!   read, written, renamed and removed under it; a new entry cannot be created under it.
//!
//! Names that are not UTF-8 cannot become keys and are refused with EILSEQ.

use super::error::{FsError, FsResult};

/// The entry that stands for a directory's own value.
pub const VALUE_NAME: &str = ".dsfs.value";
/// The prefix of escaped component spellings.
pub const ESCAPE_PREFIX: &str = ".dsfs.esc.";
/// The prefix of the names that stand for over-long components.
pub const LONG_PREFIX: &str = ".dsfs.long.";
/// The longest name, in bytes.
pub const NAME_MAX: usize = 255;
/// Hex digits of the component hash in a long name.
const LONG_HASH_HEX: usize = 32;

/// What a name in a directory refers to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NameRef {
    /// The child with this key component.
    Component(String),
    /// The directory's own value ([`VALUE_NAME`]).
    DirValue,
    /// A [`LONG_PREFIX`] name: the child whose component [`long_name_matches`] it.
    Long(String),
}

fn needs_escape(component: &str) -> bool {
    component.contains('\0')
        || component == VALUE_NAME
        || component.starts_with(ESCAPE_PREFIX)
        || component.starts_with(LONG_PREFIX)
}

/// The [`LONG_PREFIX`] name of a component too long to be shown as itself.
fn long_name(component: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(component.as_bytes());
    let mut name = String::from(LONG_PREFIX);
    for b in &digest[..LONG_HASH_HEX / 2] {
        name.push_str(&format!("{b:02x}"));
    }
    name.push('.');
    // The rest shows where the name came from: the component's start, control characters
    // replaced, cut on a character boundary.
    for c in component.chars() {
        let c = if c.is_control() { '_' } else { c };
        if name.len() + c.len_utf8() > NAME_MAX {
            break;
        }
        name.push(c);
    }
    name
}

/// Whether `name` (a [`NameRef::Long`]) is the name shown for `component`.
pub fn long_name_matches(component: &str, name: &str) -> bool {
    component_to_name(component) == name
}

fn is_plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'~')
}

/// The name a key component is shown as: itself, its escaped spelling, or, when that is
/// longer than [`NAME_MAX`], its [`LONG_PREFIX`] name.
pub fn component_to_name(component: &str) -> String {
    let name = if needs_escape(component) {
        let mut s = String::from(ESCAPE_PREFIX);
        for &b in component.as_bytes() {
            if is_plain(b) {
                s.push(b as char);
            } else {
                s.push_str(&format!("%{b:02X}"));
            }
        }
        s
    } else {
        component.to_owned()
    };
    if name.len() <= NAME_MAX {
        name
    } else {
        long_name(component)
    }
}

/// What `name` refers to. Fails with ENAMETOOLONG, EILSEQ (not UTF-8), or EINVAL (a reserved
/// spelling that does not decode to a component that needs it).
pub fn name_to_component(name: &[u8]) -> FsResult<NameRef> {
    if name.len() > NAME_MAX {
        return Err(FsError::NameTooLong);
    }
    let name = std::str::from_utf8(name).map_err(|_| FsError::BadName)?;
    if name == VALUE_NAME {
        return Ok(NameRef::DirValue);
    }
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(FsError::Invalid(format!("{name:?} is not a file name")));
    }
    if let Some(rest) = name.strip_prefix(LONG_PREFIX) {
        let hash = rest.get(..LONG_HASH_HEX).unwrap_or("");
        let well_formed = hash.len() == LONG_HASH_HEX
            && hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
            && rest.as_bytes().get(LONG_HASH_HEX) == Some(&b'.');
        if !well_formed {
            return Err(FsError::Invalid(format!(
                "{name:?}: names starting with {LONG_PREFIX} are reserved"
            )));
        }
        return Ok(NameRef::Long(name.to_owned()));
    }
    let Some(encoded) = name.strip_prefix(ESCAPE_PREFIX) else {
        return Ok(NameRef::Component(name.to_owned()));
    };
    let reserved = || {
        FsError::Invalid(format!(
            "{name:?}: names starting with {ESCAPE_PREFIX} are reserved"
        ))
    };
    let bytes = percent_decode(encoded).ok_or_else(reserved)?;
    let component = String::from_utf8(bytes).map_err(|_| reserved())?;
    // Only the canonical spelling of a component that needs escaping is accepted, so that the
    // mapping stays one-to-one.
    if component_to_name(&component) != name || !needs_escape(&component) {
        return Err(reserved());
    }
    Ok(NameRef::Component(component))
}

fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_names_are_their_own_components() {
        for n in [
            "a",
            "CIQFTFEE",
            "with space",
            "ünïcødé",
            "%41",
            "100%",
            ".hidden",
            "...",
        ] {
            assert_eq!(
                name_to_component(n.as_bytes()).unwrap(),
                NameRef::Component(n.into())
            );
            assert_eq!(component_to_name(n), n);
        }
    }

    #[test]
    fn reserved_and_unrepresentable_components_round_trip_escaped() {
        for c in ["a\0b", VALUE_NAME, ".dsfs.esc.x", "\0"] {
            let name = component_to_name(c);
            assert!(name.starts_with(ESCAPE_PREFIX), "{name}");
            assert!(!name.contains('\0'));
            assert_eq!(
                name_to_component(name.as_bytes()).unwrap(),
                NameRef::Component(c.into())
            );
        }
    }

    #[test]
    fn the_value_name_means_the_directory_value() {
        assert_eq!(
            name_to_component(VALUE_NAME.as_bytes()).unwrap(),
            NameRef::DirValue
        );
    }

    #[test]
    fn bad_names_get_clear_errors() {
        assert!(matches!(
            name_to_component(&[b'a'; 256]),
            Err(FsError::NameTooLong)
        ));
        assert!(matches!(
            name_to_component(b"\xff\xfe"),
            Err(FsError::BadName)
        ));
        assert!(matches!(
            name_to_component(b".dsfs.esc.plain"),
            Err(FsError::Invalid(_))
        ));
        assert!(matches!(
            name_to_component(b".dsfs.esc.%zz"),
            Err(FsError::Invalid(_))
        ));
        assert!(name_to_component(&[b'a'; 255]).is_ok());
        assert!(matches!(
            name_to_component(b".dsfs.long.xyz"),
            Err(FsError::Invalid(_))
        ));
    }

    #[test]
    fn over_long_components_get_short_names_that_identify_them() {
        let long = "k".repeat(300);
        let nul = "\0".repeat(100);
        let other = format!("{}x", "k".repeat(299));
        for c in [&long, &nul, &other] {
            let name = component_to_name(c);
            assert!(name.len() <= NAME_MAX, "{}", name.len());
            assert!(name.starts_with(LONG_PREFIX), "{name}");
            assert!(!name.contains('\0'));
            assert_eq!(
                name_to_component(name.as_bytes()).unwrap(),
                NameRef::Long(name.clone())
            );
            assert!(long_name_matches(c, &name));
        }
        // Components that share their first 200 bytes still get different names.
        let a = component_to_name(&long);
        let b = component_to_name(&other);
        assert_ne!(a, b);
        assert!(!long_name_matches(&other, &a));
        // A short component that spells a long name is escaped, so names stay one-to-one.
        let fake = format!("{LONG_PREFIX}{}.abc", "0".repeat(32));
        let spelled = component_to_name(&fake);
        assert!(spelled.starts_with(ESCAPE_PREFIX), "{spelled}");
        assert_eq!(
            name_to_component(spelled.as_bytes()).unwrap(),
            NameRef::Component(fake)
        );
    }
}
