//! Links a system SPDK for the `spdk` feature when pkg-config finds one; otherwise builds
//! without linking it (the FFI declarations still type-check, and `spdk:aio=` specs fail at
//! run time with a clear error). Set `PKG_CONFIG_PATH` to SPDK's `lib/pkgconfig`.

use std::process::Command;

const MODULES: &[&str] = &[
    "spdk_blob_bdev",
    "spdk_blob",
    "spdk_bdev_aio",
    "spdk_bdev",
    "spdk_init",
    "spdk_event_bdev",
    "spdk_event_accel",
    "spdk_event_iobuf",
    "spdk_event_keyring",
    "spdk_event_vmd",
    "spdk_event_sock",
    "spdk_sock_posix",
    "spdk_accel",
    "spdk_thread",
    "spdk_json",
    "spdk_env_dpdk",
];

fn pkg_config(args: &[&str]) -> Option<String> {
    let out = Command::new("pkg-config").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn main() {
    println!("cargo::rustc-check-cfg=cfg(spdk_linked)");
    println!("cargo::rerun-if-env-changed=PKG_CONFIG_PATH");
    println!("cargo::rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_SPDK").is_none() {
        return;
    }
    let mut exists = vec!["--exists"];
    exists.extend_from_slice(MODULES);
    if pkg_config(&exists).is_none() {
        println!(
            "cargo::warning=spdk feature: pkg-config finds no SPDK (modules {}); building \
             without linking it, so spdk:aio= specs are refused at run time",
            MODULES.join(" ")
        );
        return;
    }
    let mut libs = vec!["--libs"];
    libs.extend_from_slice(MODULES);
    let Some(libs) = pkg_config(&libs) else {
        return;
    };
    // SPDK's modules register themselves from C constructors: keep every library even though
    // nothing calls into some of them.
    println!("cargo::rustc-link-arg=-Wl,--no-as-needed");
    for flag in libs.split_whitespace() {
        if let Some(dir) = flag.strip_prefix("-L") {
            println!("cargo::rustc-link-search=native={dir}");
            println!("cargo::rustc-link-arg=-Wl,-rpath,{dir}");
        } else {
            println!("cargo::rustc-link-arg={flag}");
        }
    }
    println!("cargo::rustc-link-arg=-Wl,--as-needed");
    if let Some(sys) = pkg_config(&["--libs", "--static", "spdk_syslibs"]) {
        for flag in sys.split_whitespace() {
            println!("cargo::rustc-link-arg={flag}");
        }
    }
    println!("cargo::rustc-cfg=spdk_linked");
}
