//! The datastore conformance suite: go-datastore's shared test suite ported to dsfs, our own
//! cases, and a model-based property test, run against every store in [`stores::all`].
//!
//! Every trial is named `<store>::<case>`. Cases that a store's capabilities rule out are
//! reported as ignored. Run one store with `cargo test --test conformance -- redb::`, list the
//! trials with `-- --list`.

#[macro_use]
mod harness;
mod extra;
mod model;
mod stores;
mod suite;

use libtest_mimic::{Arguments, Trial};

use crate::harness::Case;

/// Every case, in the order they are listed for each store.
fn all_cases() -> Vec<Case> {
    let mut cases = suite::cases();
    cases.extend(extra::cases());
    cases.extend(model::cases());
    cases
}

fn main() {
    let args = Arguments::from_args();
    let mut trials = self_checks();
    for factory in stores::all() {
        let caps = harness::probe_capabilities(&factory);
        let cases = all_cases();
        if !args.list {
            match &caps {
                Some(c) => {
                    eprintln!("{}: {c:?}", factory.name);
                    for (case, why) in harness::ignored_reasons(c, &cases) {
                        eprintln!("{}: ignoring {case}: {why}", factory.name);
                    }
                }
                None => eprintln!(
                    "{}: could not be opened to read its capabilities",
                    factory.name
                ),
            }
        }
        for case in cases {
            trials.push(harness::trial(&factory, caps, case));
        }
    }
    libtest_mimic::run(&args, trials).exit();
}

/// Checks of the suite itself, independent of any store.
fn self_checks() -> Vec<Trial> {
    vec![
        Trial::test("harness::combinations_are_1151", || {
            let n = suite::cases()
                .iter()
                .filter(|c| c.name.starts_with("combinations::"))
                .count();
            ensure_eq!(n, 1151, "number of combination cases");
            let mut visited = Vec::new();
            suite::odometer(&[2, 3], |p| visited.push(p.to_vec()));
            ensure_eq!(
                visited,
                vec![vec![1, 0], vec![0, 1], vec![1, 1], vec![0, 2], vec![1, 2]],
                "the odometer's visiting order"
            );
            Ok(())
        }),
        Trial::test("harness::case_names_are_unique", || {
            let mut names: Vec<String> = all_cases().into_iter().map(|c| c.name).collect();
            let n = names.len();
            names.sort();
            names.dedup();
            ensure_eq!(names.len(), n, "distinct case names");
            Ok(())
        }),
        Trial::test("harness::base32_matches_rfc4648", || {
            for (input, want) in [
                (&b""[..], ""),
                (b"f", "MY======"),
                (b"fo", "MZXQ===="),
                (b"foo", "MZXW6==="),
                (b"foob", "MZXW6YQ="),
                (b"fooba", "MZXW6YTB"),
                (b"foobar", "MZXW6YTBOI======"),
                (b"\xff\xff\xff\xff\xff\xff\xff\xff", "7777777777776==="),
            ] {
                ensure_eq!(suite::base32_std(input), want, "base32 of {input:?}");
            }
            ensure_eq!(
                suite::base32_std(&[0u8; 8]).len(),
                16,
                "an 8-byte key is 13 characters and 3 padding"
            );
            Ok(())
        }),
    ]
}
