//! One emulated mps2-an385 board running the worker firmware in `qemu-system-arm`.
//!
//! Each board writes into the test's directory: `<name>.uart` (its defmt log, binary),
//! `<name>.stderr` (QEMU's messages and the firmware's semihosting report line) and
//! `<name>.stdout`. [`Board::logs`] decodes the defmt log with `defmt-print` when it is
//! installed (`cargo install defmt-print`), and says how to decode it otherwise.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};

use tokio::process::{Child, Command};

/// The QEMU binary.
pub const QEMU: &str = "qemu-system-arm";

/// Checks that QEMU is installed.
///
/// # Panics
/// If `qemu-system-arm` cannot be run: these tests need it and are never skipped.
pub fn require_qemu() {
    let found = std::process::Command::new(QEMU)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    assert!(
        found,
        "{QEMU} is not installed; the QEMU tests need it. Install it with \
         `apt-get install -y qemu-system-arm` (the repository's .ci/run does)"
    );
}

/// The line the firmware prints when it ends: what it did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// The worker's name.
    pub name: String,
    /// The job whose end stopped it.
    pub job: u32,
    /// Tasks it answered.
    pub answered: u32,
    /// Connections it made.
    pub sessions: u32,
}

impl Report {
    /// Parses `colony-report name=.. job=.. answered=.. sessions=..`.
    pub fn parse(line: &str) -> Option<Report> {
        let rest = line.trim().strip_prefix("colony-report ")?;
        let mut report = Report {
            name: String::new(),
            job: 0,
            answered: 0,
            sessions: 0,
        };
        for word in rest.split_whitespace() {
            let (key, value) = word.split_once('=')?;
            match key {
                "name" => report.name = value.to_owned(),
                "job" => report.job = value.parse().ok()?,
                "answered" => report.answered = value.parse().ok()?,
                "sessions" => report.sessions = value.parse().ok()?,
                _ => {}
            }
        }
        Some(report)
    }
}

/// A running (or ended) emulated board.
#[derive(Debug)]
pub struct Board {
    name: String,
    elf: PathBuf,
    uart: PathBuf,
    stderr: PathBuf,
    child: Child,
    status: Option<ExitStatus>,
}

impl Board {
    /// Boots `elf`, telling it to work for the server at host port `port` as `name`; its logs go
    /// to `dir`.
    ///
    /// # Errors
    /// If QEMU cannot be started or the log files cannot be created.
    pub fn boot(elf: &Path, port: u16, name: &str, dir: &Path) -> io::Result<Board> {
        let uart = dir.join(format!("{name}.uart"));
        let stderr = dir.join(format!("{name}.stderr"));
        let stdout = dir.join(format!("{name}.stdout"));
        let child = Command::new(QEMU)
            .args(["-M", "mps2-an385", "-nographic", "-monitor", "none"])
            .args(["-semihosting-config", "enable=on,target=native"])
            .arg("-serial")
            .arg(format!("file:{}", uart.display()))
            .args(["-nic", "user,model=lan9118"])
            .arg("-kernel")
            .arg(elf)
            .arg("-append")
            .arg(format!("server=10.0.2.2:{port} name={name}"))
            .stdin(Stdio::null())
            .stdout(File::create(&stdout)?)
            .stderr(File::create(&stderr)?)
            .kill_on_drop(true)
            .spawn()?;
        Ok(Board {
            name: name.to_owned(),
            elf: elf.to_path_buf(),
            uart,
            stderr,
            child,
            status: None,
        })
    }

    /// The board's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Waits for QEMU to exit; its status carries the firmware's semihosting exit code.
    ///
    /// # Errors
    /// If waiting fails.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        let status = self.child.wait().await?;
        self.status = Some(status);
        Ok(status)
    }

    /// Freezes the emulator (SIGSTOP, through `kill(1)`): the board holds its leases and
    /// answers nothing.
    ///
    /// # Errors
    /// If the signal cannot be sent.
    pub fn pause(&self) -> io::Result<()> {
        let pid = self
            .child
            .id()
            .ok_or_else(|| io::Error::other("the emulator has already exited"))?;
        let status = std::process::Command::new("kill")
            .args(["-STOP", &pid.to_string()])
            .status()?;
        if status.success() {
            Ok(())
        } else {
            Err(io::Error::other(format!("kill -STOP {pid}: {status}")))
        }
    }

    /// Kills the emulator (SIGKILL) and reaps it: the board vanishes without a word.
    ///
    /// # Errors
    /// If the signal cannot be sent or the process not reaped.
    pub async fn kill(&mut self) -> io::Result<ExitStatus> {
        self.child.start_kill()?;
        self.wait().await
    }

    /// The firmware's report line, once it has ended.
    pub fn report(&self) -> Option<Report> {
        let text = std::fs::read_to_string(&self.stderr).ok()?;
        text.lines().find_map(Report::parse)
    }

    /// Everything the board said: QEMU's standard error and the decoded defmt log.
    pub fn logs(&self) -> String {
        let stderr = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        let mut text = format!(
            "---- {} ({}) ----\nqemu stderr:\n{stderr}\n",
            self.name,
            self.elf.display()
        );
        let decoded = std::process::Command::new("defmt-print")
            .arg("-e")
            .arg(&self.elf)
            .stdin(File::open(&self.uart).map_or_else(|_| Stdio::null(), Stdio::from))
            .stderr(Stdio::inherit())
            .output();
        match decoded {
            Ok(output) if output.status.success() || !output.stdout.is_empty() => {
                text.push_str("defmt log:\n");
                text.push_str(&String::from_utf8_lossy(&output.stdout));
            }
            _ => text.push_str(&format!(
                "defmt log (binary) in {}; decode it with `defmt-print -e {} < {}` \
                 (cargo install defmt-print)\n",
                self.uart.display(),
                self.elf.display(),
                self.uart.display()
            )),
        }
        text
    }
}
