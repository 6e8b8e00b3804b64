//! Linker scripts: cortex-m-rt's `link.x` (memory.x comes from the board crate) and, with the
//! `defmt` feature, defmt's `defmt.x`. Also names the build-time settings, so that changing one
//! rebuilds the firmware.

fn main() {
    println!("cargo:rustc-link-arg-bins=-Tlink.x");
    if std::env::var_os("CARGO_FEATURE_DEFMT").is_some() {
        println!("cargo:rustc-link-arg-bins=-Tdefmt.x");
    }
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
    println!("cargo:rerun-if-changed=build.rs");
}
