//! Build-time probes for the optional native backends.
//!
//! SPDK (`spdk` feature): links a system SPDK when pkg-config finds one; otherwise builds without
//! linking it (the FFI declarations still type-check, and `spdk:aio=` specs fail at run time
//! with a clear error). Set `PKG_CONFIG_PATH` to SPDK's `lib/pkgconfig`.
//!
//! Motr (`motr` feature): builds the Motr client shim (`src/backend/motr/shim.c`) when a Motr is
//! found: `DSFS_MOTR_DIR` naming a built Motr source tree (`configure && make`; the shim is
//! compiled against its headers and `config.h` and linked with `motr/.libs/libmotr.so`, with an
//! rpath to it), or else an installed Motr that `pkg-config motr` knows. Without one, the
//! feature still type-checks (`cargo clippy`, `cargo doc`), but nothing that calls the shim
//! links.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    spdk();
    #[cfg(feature = "motr")]
    motr::build();
}

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

fn spdk() {
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

#[cfg(feature = "motr")]
mod motr {
    use std::path::PathBuf;
    use std::process::Command;

    pub fn build() {
        println!("cargo:rerun-if-changed=src/backend/motr/shim.c");
        println!("cargo:rerun-if-env-changed=DSFS_MOTR_DIR");
        let mut cc = cc::Build::new();
        cc.file("src/backend/motr/shim.c")
            .define("M0_EXTERN", "extern")
            .define("M0_INTERNAL", "")
            .define("_GNU_SOURCE", None)
            .flag_if_supported("-Wno-attributes")
            .flag_if_supported("-Wno-unused-parameter")
            .flag_if_supported("-Wno-sign-compare")
            .flag_if_supported("-Wno-missing-field-initializers");
        if let Some(dir) = std::env::var_os("DSFS_MOTR_DIR").map(PathBuf::from) {
            let lib = dir.join("motr/.libs");
            if !dir.join("motr/client.h").exists() || !dir.join("config.h").exists() {
                panic!(
                    "DSFS_MOTR_DIR={} is not a configured Motr source tree (no motr/client.h or config.h)",
                    dir.display()
                );
            }
            cc.include(&dir)
                .flag("-include")
                .flag(dir.join("config.h").to_string_lossy().as_ref());
            cc.compile("dsfs_motr_shim");
            println!("cargo:rustc-link-search=native={}", lib.display());
            println!("cargo:rustc-link-lib=dylib=motr");
            println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
            return;
        }
        let probe = Command::new("pkg-config")
            .args(["--cflags", "--libs", "motr"])
            .output();
        match probe {
            Ok(out) if out.status.success() => {
                let flags = String::from_utf8_lossy(&out.stdout).into_owned();
                for f in flags.split_whitespace() {
                    if let Some(inc) = f.strip_prefix("-I") {
                        cc.include(inc);
                    } else if let Some(dir) = f.strip_prefix("-L") {
                        println!("cargo:rustc-link-search=native={dir}");
                    } else if let Some(name) = f.strip_prefix("-l") {
                        println!("cargo:rustc-link-lib={name}");
                    } else {
                        cc.flag(f);
                    }
                }
                cc.compile("dsfs_motr_shim");
            }
            _ => println!(
                "cargo:warning=feature motr: no Motr found (set DSFS_MOTR_DIR to a built Motr \
                 tree, or install one pkg-config knows): the Motr client type-checks but does \
                 not link"
            ),
        }
    }
}
