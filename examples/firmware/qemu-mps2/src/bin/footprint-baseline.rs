//! The QEMU firmware without Colony, for measuring what Colony adds (see `../../footprint.sh`):
//! the same board, network stack, settings and logging, with a task that connects to the server
//! and echoes what it reads instead of running the worker. Not meant to be run.
#![no_std]
#![no_main]

#[macro_use]
#[path = "../fmt.rs"]
mod fmt;
#[allow(dead_code)]
#[path = "../settings.rs"]
mod settings;

use board_qemu_mps2::exit::{cmdline, exit};
use board_qemu_mps2::rng::TimerNoise;
use board_qemu_mps2::{Lan9118, executor};
use embassy_executor::Spawner;
use embassy_net::tcp::TcpSocket;
use embassy_net::{Ipv4Address, Ipv4Cidr, Runner, Stack, StackResources, StaticConfigV4};

use settings::{GATEWAY, IP, Settings};

board_qemu_mps2::interrupts!();

const SOCKET_BUF: usize = 1024;

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
    info!(
        "{=str}: lan9118 id {=u32:#x}",
        settings.name,
        board.eth.id_rev()
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
        spawner.spawn(echo(stack, settings).unwrap_or_else(|_| exit(4)));
    })
}

#[embassy_executor::task]
async fn net(mut runner: Runner<'static, Lan9118>) -> ! {
    runner.run().await
}

#[embassy_executor::task]
async fn echo(stack: Stack<'static>, settings: Settings) {
    let mut socket_rx = [0u8; SOCKET_BUF];
    let mut socket_tx = [0u8; SOCKET_BUF];
    let mut buf = [0u8; 256];
    let mut socket = TcpSocket::new(stack, &mut socket_rx, &mut socket_tx);
    let server = (Ipv4Address::from(settings.server.ip), settings.server.port);
    if socket.connect(server).await.is_err() {
        exit(5);
    }
    loop {
        let Ok(n) = socket.read(&mut buf).await else {
            exit(6)
        };
        if n == 0 || socket.write(&buf[..n]).await.is_err() {
            exit(6)
        }
    }
}
