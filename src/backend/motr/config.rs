//! The `motr:` store spec: parsing its options and opening the store it names.
//!
//! `motr:INDEX_FID?ha=EP&local=EP&profile=FID&process=FID[&compat=go-ds-motr][&inline=BYTES]
//! [&timeout=SECS]` reaches a Motr cluster; `motr:INDEX_FID?fake=PATH` uses the in-process Motr
//! persisted in the file `PATH` (tests, trying dsfs out).

use std::path::PathBuf;
use std::sync::Arc;

use super::fake::FakeMotr;
use super::{Id128, Layout, MotrOps, MotrOptions, MotrStore, parse_index_fid};
use crate::datastore::{Datastore, Error, ErrorKind, Result};

/// The options named by every option list a `motr:` spec takes.
pub const OPTIONS: &[&str] = &[
    "ha", "local", "profile", "process", "compat", "fake", "inline", "timeout",
];

/// Where a `motr:` spec's store lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MotrSpec {
    /// The DIX index that holds the records.
    pub index: Id128,
    /// The HA service endpoint (`127.0.0.1@tcp:12345:34:1`).
    pub ha: Option<String>,
    /// This client's local endpoint (`127.0.0.1@tcp:12345:34:101`).
    pub local: Option<String>,
    /// The profile fid (`<0x7000000000000001:0>`).
    pub profile: Option<String>,
    /// This client's process fid (`<0x7200000000000001:64>`).
    pub process: Option<String>,
    /// The record layout (`compat=go-ds-motr` or `compat=none`).
    pub layout: Layout,
    /// The in-process Motr's file, instead of a cluster.
    pub fake: Option<PathBuf>,
    /// Values up to this many bytes stay in their index record.
    pub inline_max: usize,
    /// The bound, in seconds, on connecting to the cluster.
    pub timeout_secs: u64,
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidArgument, msg)
}

impl MotrSpec {
    /// The spec for the argument of `motr:` (the index fid), before options.
    pub fn parse_arg(arg: &str) -> Result<MotrSpec> {
        if arg.is_empty() {
            return Err(invalid(
                "motr: needs an index fid (motr:0x7800000000000001:0x1?ha=...)",
            ));
        }
        Ok(MotrSpec {
            index: parse_index_fid(arg)?,
            ha: None,
            local: None,
            profile: None,
            process: None,
            layout: Layout::Native,
            fake: None,
            inline_max: super::DEFAULT_INLINE_MAX,
            timeout_secs: 30,
        })
    }

    /// Applies one `name=value` option.
    pub fn set(&mut self, name: &str, value: &str) -> Result<()> {
        let text = || {
            if value.is_empty() {
                Err(invalid(format!("motr: {name} needs a value")))
            } else {
                Ok(Some(value.to_owned()))
            }
        };
        match name {
            "ha" => self.ha = text()?,
            "local" => self.local = text()?,
            "profile" => self.profile = text()?,
            "process" => self.process = text()?,
            "fake" => self.fake = text()?.map(PathBuf::from),
            "compat" => {
                self.layout = match value {
                    "go-ds-motr" => Layout::GoDsMotr,
                    "none" | "" => Layout::Native,
                    other => {
                        return Err(invalid(format!(
                            "motr: compat={other:?}: the one compatibility mode is go-ds-motr"
                        )));
                    }
                }
            }
            "inline" => {
                self.inline_max = value
                    .parse()
                    .map_err(|_| invalid(format!("motr: inline takes bytes, not {value:?}")))?
            }
            "timeout" => {
                self.timeout_secs = value
                    .parse::<u64>()
                    .ok()
                    .filter(|&s| s > 0)
                    .ok_or_else(|| invalid(format!("timeout takes whole seconds, not {value:?}")))?
            }
            other => return Err(invalid(format!("motr: unknown option {other:?}"))),
        }
        Ok(())
    }

    /// A one-line description for messages.
    pub fn describe(&self) -> String {
        match &self.fake {
            Some(p) => format!("in-process Motr {} index {}", p.display(), self.index),
            None => format!(
                "Motr index {} via HA {}",
                self.index,
                self.ha.as_deref().unwrap_or("?")
            ),
        }
    }

    /// Connects (or opens the in-process Motr) and opens the store.
    pub fn open(&self, durable: bool) -> Result<Arc<dyn Datastore>> {
        let motr: Arc<dyn MotrOps> = match &self.fake {
            Some(path) => Arc::new(FakeMotr::open(path).map_err(|e| {
                Error::io(format!("opening the in-process Motr {}", path.display()), e)
            })?),
            None => self.connect()?,
        };
        let options = MotrOptions {
            layout: self.layout,
            inline_max: self.inline_max,
            durable,
            ..MotrOptions::new(self.index)
        };
        Ok(Arc::new(MotrStore::open(motr, options)?))
    }

    #[cfg(feature = "motr")]
    fn connect(&self) -> Result<Arc<dyn MotrOps>> {
        let need = |v: &Option<String>, name: &str| {
            v.clone()
                .ok_or_else(|| invalid(format!("motr: the {name}= option is missing")))
        };
        let conf = super::sys::ClientConf {
            ha: need(&self.ha, "ha")?,
            local: need(&self.local, "local")?,
            profile: need(&self.profile, "profile")?,
            process: need(&self.process, "process")?,
            timeout: std::time::Duration::from_secs(self.timeout_secs),
        };
        Ok(super::sys::RealMotr::connect(conf)?)
    }

    #[cfg(not(feature = "motr"))]
    fn connect(&self) -> Result<Arc<dyn MotrOps>> {
        Err(Error::new(
            ErrorKind::Unsupported,
            "this dsfs was built without the Motr client (build with --features motr and \
             DSFS_MOTR_DIR naming a built Motr tree); the in-process Motr (fake=PATH) works",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{SpecKind, StoreSpec};

    #[test]
    fn a_motr_spec_names_the_index_the_endpoints_and_the_layout() {
        let s = StoreSpec::parse(
            "motr:<0x7800000000000001:0x2>?ha=127.0.0.1@tcp:12345:34:1\
             &local=127.0.0.1@tcp:12345:34:101&profile=<0x7000000000000001:0>\
             &process=<0x7200000000000001:64>&compat=go-ds-motr&inline=512&timeout=5",
        )
        .unwrap();
        let SpecKind::Motr(m) = s.kind else {
            panic!("not a motr spec: {:?}", s.kind)
        };
        assert_eq!(
            m.index,
            Id128 {
                hi: 0x7800_0000_0000_0001,
                lo: 2
            }
        );
        assert_eq!(m.ha.as_deref(), Some("127.0.0.1@tcp:12345:34:1"));
        assert_eq!(m.local.as_deref(), Some("127.0.0.1@tcp:12345:34:101"));
        assert_eq!(m.profile.as_deref(), Some("<0x7000000000000001:0>"));
        assert_eq!(m.process.as_deref(), Some("<0x7200000000000001:64>"));
        assert_eq!(m.layout, Layout::GoDsMotr);
        assert_eq!((m.inline_max, m.timeout_secs), (512, 5));
    }

    #[test]
    fn bad_motr_specs_are_refused_with_the_reason() {
        for (text, why) in [
            ("motr:", "index fid"),
            ("motr:0x7000000000000001:1", "0x78"),
            ("motr:0x7800000000000001:1?compat=leveldb", "go-ds-motr"),
            ("motr:0x7800000000000001:1?bogus=1", "unknown store option"),
            ("motr:0x7800000000000001:1?timeout=0", "whole seconds"),
        ] {
            let e = StoreSpec::parse(text).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{text}");
            assert!(e.to_string().contains(why), "{text}: {e}");
        }
    }

    #[test]
    fn the_in_process_motr_opens_through_a_spec_and_keeps_values() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "motr:0x7800000000000001:1?fake={}&index={}",
            dir.path().join("m.fake").display(),
            dir.path().join("index.redb").display()
        );
        let key = crate::datastore::Key::new("/a/b");
        {
            let opened = crate::spec::open(
                &StoreSpec::parse(&text).unwrap(),
                crate::spec::OpenMode::default(),
            )
            .unwrap();
            opened.store.put(&key, &[9u8; 20_000]).unwrap();
            opened.store.close().unwrap();
        }
        let opened = crate::spec::open(
            &StoreSpec::parse(&text).unwrap(),
            crate::spec::OpenMode::default(),
        )
        .unwrap();
        assert_eq!(opened.store.get(&key).unwrap(), vec![9u8; 20_000]);
    }

    #[cfg(not(feature = "motr"))]
    #[test]
    fn without_the_feature_a_cluster_spec_says_how_to_build() {
        let s = MotrSpec::parse_arg("0x7800000000000001:1").unwrap();
        let e = s.open(false).err().unwrap();
        assert_eq!(e.kind(), ErrorKind::Unsupported);
        assert!(e.to_string().contains("--features motr"), "{e}");
    }
}
