//! Linker scripts (cortex-m-rt's `link.x`, embassy-rp's `link-rp.x` for the boot loader,
//! defmt's `defmt.x`) and `memory.x`; also names the build-time settings, so that changing one
//! rebuilds the firmware.

use std::path::PathBuf;
use std::{env, fs};

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    fs::write(out.join("memory.x"), include_bytes!("memory.x")).expect("write memory.x");
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rustc-link-arg-bins=--nmagic");
    println!("cargo:rustc-link-arg-bins=-Tlink.x");
    println!("cargo:rustc-link-arg-bins=-Tlink-rp.x");
    println!("cargo:rustc-link-arg-bins=-Tdefmt.x");
    for var in [
        "COLONY_SERVER",
        "COLONY_SECRET",
        "COLONY_NAME",
        "COLONY_SLOTS",
        "COLONY_MAX_FRAME",
        "COLONY_IP",
        "COLONY_GATEWAY",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    println!("cargo:rerun-if-changed=memory.x");
    println!("cargo:rerun-if-changed=build.rs");
}
