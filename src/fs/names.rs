//! File names and key components.
//!
//! A key component is any UTF-8 string without `/` (and not `.`, `..` or empty); a POSIX name
//! is any byte string without `/` and NUL, at most 255 bytes. The mapping is the identity for
//! every UTF-8 name, with two reserved spellings:
//!
//! * [`VALUE_NAME`] (`.dsfs.value`) inside a directory stands for the value of the directory's
//!   own key, for keys that hold a value and have children (go-datastore allows both);
//! * names starting with [`ESCAPE_PREFIX`] (`.dsfs.esc.`) carry a percent-encoded component: the
//!   spelling of components that contain NUL, or that would themselves read as reserved names.
//!
//! Names that are not UTF-8 cannot become keys and are refused with EILSEQ.

use super::error::{FsError, FsResult};

/// The entry that stands for a directory's own value.
pub const VALUE_NAME: &str = ".dsfs.value";
/// The prefix of escaped component spellings.
pub const ESCAPE_PREFIX: &str = ".dsfs.esc.";
/// The longest name, in bytes.
pub const NAME_MAX: usize = 255;

/// What a name in a directory refers to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NameRef {
    /// The child with this key component.
    Component(String),
    /// The directory's own value ([`VALUE_NAME`]).
    DirValue,
}

fn needs_escape(component: &str) -> bool {
    component.contains('\0') || component == VALUE_NAME || component.starts_with(ESCAPE_PREFIX)
}

fn is_plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'~')
}

/// The name a key component is shown as; `None` if even its escaped spelling is longer than
/// [`NAME_MAX`] (such keys stay reachable through the datastore API only).
pub fn component_to_name(component: &str) -> Option<String> {
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
    (name.len() <= NAME_MAX).then_some(name)
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
    if component_to_name(&component).as_deref() != Some(name) || !needs_escape(&component) {
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
            assert_eq!(component_to_name(n).unwrap(), n);
        }
    }

    #[test]
    fn reserved_and_unrepresentable_components_round_trip_escaped() {
        for c in ["a\0b", VALUE_NAME, ".dsfs.esc.x", "\0"] {
            let name = component_to_name(c).unwrap();
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
        assert!(component_to_name(&"\0".repeat(100)).is_none());
    }
}
