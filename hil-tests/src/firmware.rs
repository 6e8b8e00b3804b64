//! Building the QEMU firmware (`examples/firmware/qemu-mps2`) for both instruction sets.
//!
//! The build uses the firmware's defaults: no `COLONY_*` variable is passed, so the build is the
//! same as the check script's and cargo finds it up to date. The server address and the
//! worker's name come from QEMU's command line at boot instead.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;
use tokio::sync::OnceCell;

/// The secret the firmware uses when built without `COLONY_SECRET`: a public test key, the hex
/// of "colony qemu test secret, public!" (`examples/firmware/qemu-mps2/src/settings.rs`).
pub const TEST_SECRET_HEX: &str =
    "636f6c6f6e792071656d7520746573742073656372657420207075626c696321";

/// The firmware's task kinds, in its order.
pub const KINDS: [&str; 2] = ["crc32c", "reverse"];

/// How long a build may take (a cold one compiles embassy and smoltcp for two targets).
const BUILD_LIMIT: Duration = Duration::from_secs(30 * 60);

/// The firmware, built.
#[derive(Clone, Debug)]
pub struct Firmware {
    /// For Cortex-M3 (the board's own core).
    pub thumbv7m: PathBuf,
    /// For Cortex-M0+ (the RP2040's instruction set, no compare-and-swap), run by the same board.
    pub thumbv6m: PathBuf,
}

/// The repository's root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from(".."), Path::to_path_buf)
}

/// The firmware projects' directory.
pub fn firmware_dir() -> PathBuf {
    repo_root().join("examples").join("firmware")
}

/// Builds `examples/firmware/qemu-mps2` for both targets, once per test process.
///
/// # Panics
/// If the build fails or takes longer than 30 minutes; the message holds cargo's output.
pub async fn qemu_mps2() -> &'static Firmware {
    static FIRMWARE: OnceCell<Firmware> = OnceCell::const_new();
    FIRMWARE.get_or_init(build).await
}

async fn build() -> Firmware {
    let project = firmware_dir().join("qemu-mps2");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .args(["build", "--release", "--locked"])
        .current_dir(&project)
        // The firmware's own target directory, not the host's, whatever the caller set.
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    for var in [
        "COLONY_SERVER",
        "COLONY_SECRET",
        "COLONY_NAME",
        "COLONY_SLOTS",
        "COLONY_MAX_FRAME",
        "COLONY_IP",
        "COLONY_GATEWAY",
    ] {
        command.env_remove(var);
    }
    let output = match tokio::time::timeout(BUILD_LIMIT, command.output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(err)) => panic!("cannot run cargo to build {}: {err}", project.display()),
        Err(_) => panic!("building {} took over 30 minutes", project.display()),
    };
    assert!(
        output.status.success(),
        "building the QEMU firmware failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let target = repo_root().join("target").join("firmware");
    let firmware = Firmware {
        thumbv7m: target.join("thumbv7m-none-eabi/release/qemu-mps2"),
        thumbv6m: target.join("thumbv6m-none-eabi/release/qemu-mps2"),
    };
    for elf in [&firmware.thumbv7m, &firmware.thumbv6m] {
        assert!(elf.is_file(), "the build left no {}", elf.display());
    }
    firmware
}
