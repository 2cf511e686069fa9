//! Settings shared by the dsfs benchmarks (`benches/datastore.rs`, `benches/index.rs`).
//!
//! `DSFS_BENCH_QUICK=1` turns every benchmark into a smoke test: 10 samples, a few milliseconds
//! of warm-up and measurement, few bootstrap resamples and no plots. The figures are then
//! meaningless; the point is that every benchmark still runs its setup and its routine, so CI
//! catches a bench that panics or hangs. The big fixtures (100k-key stores, 1M-key indexes) are
//! built small in quick mode and in criterion's test mode (`cargo test --all-targets` runs every
//! bench once, in the test profile): see [`small`].

#![allow(dead_code)] // Each bench target uses a different subset.

use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, SamplingMode};

/// Whether `name` is set to something other than empty or `0`.
pub fn env_flag(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| !v.is_empty() && v != "0")
}

/// Whether `DSFS_BENCH_QUICK` asks for the smoke-test settings.
pub fn quick() -> bool {
    env_flag("DSFS_BENCH_QUICK")
}

/// Whether criterion runs in test mode (each benchmark once, untimed): `cargo test --benches`
/// or `cargo test --all-targets` (no `--bench` argument), or `cargo bench -- --test`. The rule
/// is criterion's own.
pub fn test_mode() -> bool {
    let (mut bench, mut test) = (false, false);
    for arg in std::env::args() {
        bench |= arg == "--bench";
        test |= arg == "--test";
    }
    test || !bench
}

/// Whether to build the small versions of the big fixtures: in quick mode and in test mode,
/// where the figures do not matter and only the code paths should run.
pub fn small() -> bool {
    quick() || test_mode()
}

/// The `Criterion` every bench starts from: modest defaults, or the quick settings.
pub fn criterion() -> Criterion {
    let c = Criterion::default();
    if quick() {
        c.sample_size(10)
            .warm_up_time(Duration::from_millis(5))
            .measurement_time(Duration::from_millis(20))
            .nresamples(1_000)
            .without_plots()
    } else {
        c.sample_size(20)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2))
            .nresamples(20_000)
    }
}

/// How long a group's benchmarks should run when not in quick mode.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    /// Samples per benchmark (criterion's minimum is 10).
    pub samples: usize,
    /// Warm-up time.
    pub warm_up: Duration,
    /// Measurement time.
    pub measure: Duration,
    /// Use flat sampling (the same iteration count in every sample): for routines that take
    /// milliseconds or more, where linear sampling would run far longer than asked.
    pub flat: bool,
}

impl Budget {
    /// Fast routines (nanoseconds to microseconds).
    pub const FAST: Budget = Budget {
        samples: 20,
        warm_up: Duration::from_millis(300),
        measure: Duration::from_secs(1),
        flat: false,
    };
    /// Routines of tens of microseconds to a few milliseconds.
    pub const MEDIUM: Budget = Budget {
        samples: 20,
        warm_up: Duration::from_millis(500),
        measure: Duration::from_secs(2),
        flat: false,
    };
    /// Routines of tens of milliseconds to seconds.
    pub const SLOW: Budget = Budget {
        samples: 10,
        warm_up: Duration::from_millis(500),
        measure: Duration::from_secs(4),
        flat: true,
    };
}

/// A benchmark group with `budget`, or with the quick settings when `DSFS_BENCH_QUICK` is set
/// (group settings override the `Criterion` ones, so every group goes through here).
pub fn group<'a>(c: &'a mut Criterion, name: &str, budget: Budget) -> BenchmarkGroup<'a, WallTime> {
    let mut g = c.benchmark_group(name);
    if quick() {
        g.sample_size(10)
            .warm_up_time(Duration::from_millis(5))
            .measurement_time(Duration::from_millis(20))
            .sampling_mode(SamplingMode::Flat);
    } else {
        g.sample_size(budget.samples)
            .warm_up_time(budget.warm_up)
            .measurement_time(budget.measure)
            .sampling_mode(if budget.flat {
                SamplingMode::Flat
            } else {
                SamplingMode::Auto
            });
    }
    g
}

/// A human label for a byte count: `1KiB`, `256KiB`, `1MiB`.
pub fn size_label(bytes: usize) -> String {
    if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) {
        format!("{}MiB", bytes >> 20)
    } else if bytes >= 1 << 10 && bytes.is_multiple_of(1 << 10) {
        format!("{}KiB", bytes >> 10)
    } else {
        format!("{bytes}B")
    }
}

/// A human label for a count: `1k`, `100k`, `1M`.
pub fn count_label(n: usize) -> String {
    if n >= 1_000_000 && n.is_multiple_of(1_000_000) {
        format!("{}M", n / 1_000_000)
    } else if n >= 1_000 && n.is_multiple_of(1_000) {
        format!("{}k", n / 1_000)
    } else {
        n.to_string()
    }
}

/// splitmix64: a cheap, well-mixed deterministic sequence for names and values.
pub fn mix(i: u64) -> u64 {
    let mut z = i.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `len` deterministic pseudo-random bytes (incompressible enough for every store here).
pub fn value(len: usize, seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    let mut i = seed.wrapping_mul(0x1000_0000);
    while out.len() < len {
        out.extend_from_slice(&mix(i).to_le_bytes());
        i += 1;
    }
    out.truncate(len);
    out
}
