//! Builds the Motr client shim (`src/backend/motr/shim.c`) when the `motr` feature is on and a
//! Motr is found: `DSFS_MOTR_DIR` naming a built Motr source tree (`configure && make`; the
//! shim is compiled against its headers and `config.h` and linked with
//! `motr/.libs/libmotr.so`, with an rpath to it), or else an installed Motr that
//! `pkg-config motr` knows. Without one, the feature still type-checks (`cargo clippy`,
//! `cargo doc`), but nothing that calls the shim links.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "motr")]
    motr::build();
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
