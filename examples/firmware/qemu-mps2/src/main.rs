//! A Colony worker on QEMU's mps2-an385 board: it joins the server set at build time (or on
//! QEMU's command line), runs `crc32c` and `reverse` tasks, and exits with code 0 once the server
//! says a job finished. A fatal setup error exits non-zero; a bad frame or a dropped link only
//! makes it reconnect.
//!
//! Exit codes (through semihosting): 0 job finished, 2 no network controller, 3 bad worker
//! configuration, 101 panic, 102 hard fault.
#![no_std]
#![no_main]

#[macro_use]
mod fmt;
mod settings;

use board_qemu_mps2::exit::{cmdline, exit, report};
use board_qemu_mps2::rng::TimerNoise;
use board_qemu_mps2::{Lan9118, executor};
use colony_core::proto::Platform;
use colony_core::worker::Config;
use colony_embassy::{Buffers, TcpLink, Until, Worker, rx_len, tx_len};
use embassy_executor::Spawner;
use embassy_net::{Ipv4Address, Ipv4Cidr, Runner, Stack, StackResources, StaticConfigV4};

use firmware_common::report::Line;
use firmware_common::tasks::{KINDS, NAMES};
use settings::{GATEWAY, IP, MAX_FRAME, SECRET, SLOTS, Settings};

board_qemu_mps2::interrupts!();

/// Socket buffer sizes (smoltcp's windows).
const SOCKET_BUF: usize = 1024;
/// Room for one task's output.
const SCRATCH: usize = 256;

#[cortex_m_rt::entry]
fn main() -> ! {
    static mut CMDLINE: [u8; 256] = [0; 256];
    static mut RESOURCES: StackResources<2> = StackResources::new();

    let board = match board_qemu_mps2::init() {
        Ok(board) => board,
        Err(err) => {
            error!("no network: {}", err);
            exit(2)
        }
    };
    let settings = Settings::new(cmdline(CMDLINE));
    let mac = board.eth.mac_address();
    info!(
        "{=str}: lan9118 id {=u32:#x}, mac {=[u8]:02x}, server {}.{}.{}.{}:{}",
        settings.name,
        board.eth.id_rev(),
        mac,
        settings.server.ip[0],
        settings.server.ip[1],
        settings.server.ip[2],
        settings.server.ip[3],
        settings.server.port
    );

    let mut rng = TimerNoise::new(settings.name.as_bytes());
    let mut seed = [0u8; 8];
    rng.fill_bytes(&mut seed);
    let config = embassy_net::Config::ipv4_static(StaticConfigV4 {
        address: Ipv4Cidr::new(Ipv4Address::from(IP.0), IP.1),
        gateway: Some(Ipv4Address::from(GATEWAY)),
        dns_servers: Default::default(),
    });
    let (stack, runner) = embassy_net::new(board.eth, config, RESOURCES, u64::from_le_bytes(seed));

    executor::run(|spawner: Spawner| {
        spawner.spawn(net(runner).unwrap_or_else(|_| exit(4)));
        spawner.spawn(work(stack, settings, rng).unwrap_or_else(|_| exit(4)));
    })
}

#[embassy_executor::task]
async fn net(mut runner: Runner<'static, Lan9118>) -> ! {
    runner.run().await
}

#[embassy_executor::task]
async fn work(stack: Stack<'static>, settings: Settings, mut rng: TimerNoise) {
    let mut rx = [0u8; rx_len(MAX_FRAME)];
    let mut tx = [0u8; tx_len(MAX_FRAME)];
    let mut scratch = [0u8; SCRATCH];
    let mut socket_rx = [0u8; SOCKET_BUF];
    let mut socket_tx = [0u8; SOCKET_BUF];

    let config = Config::new(settings.name, &SECRET, &NAMES)
        .with_platform(Platform::Mcu)
        .with_slots(SLOTS as u32)
        .with_max_frame(MAX_FRAME);
    let buffers = Buffers::new(&mut rx, &mut tx, &mut scratch);
    let mut worker = match Worker::<SLOTS>::new(config, &KINDS, buffers) {
        Ok(worker) => worker,
        Err(err) => {
            error!("bad worker configuration: {}", err);
            exit(3)
        }
    };
    let server = (Ipv4Address::from(settings.server.ip), settings.server.port);
    let mut link = TcpLink::new(stack, server, &mut socket_rx, &mut socket_tx);
    let mut entropy = |buf: &mut [u8]| rng.fill_bytes(buf);
    let finished = worker
        .run(&mut link, &mut entropy, Until::JobFinished)
        .await;
    let stats = worker.stats();
    info!(
        "{} finished: {=u32} tasks answered over {=u32} connections",
        finished.job,
        stats.answered(),
        stats.sessions()
    );
    report(
        Line::new()
            .text("colony-report name=")
            .text(settings.name)
            .text(" job=")
            .number(finished.job.get())
            .text(" answered=")
            .number(stats.answered())
            .text(" sessions=")
            .number(stats.sessions())
            .as_str(),
    );
    exit(0)
}
