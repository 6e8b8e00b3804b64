//! Names the build-time settings, so that changing one rebuilds the firmware.

fn main() {
    for var in [
        "COLONY_SERVER",
        "COLONY_SECRET",
        "COLONY_NAME",
        "COLONY_SLOTS",
        "COLONY_MAX_FRAME",
        "COLONY_WIFI_SSID",
        "COLONY_WIFI_PASSWORD",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
