//! A Colony worker on an RP2040 with a WIZnet W5500 Ethernet controller, wired as on WIZnet's
//! W5500-EVB-Pico: SPI0 with SCK on GPIO18, MOSI GPIO19, MISO GPIO16, chip select GPIO17,
//! interrupt GPIO21, reset GPIO20.
//!
//! It gets an address (DHCP, or the static one set at build time), joins the server set at
//! build time and serves job after job, reconnecting whenever the link or the server goes away.
//! Nonces come from the RP2040's ring-oscillator random bit; the MAC address from the flash
//! chip's unique id. See `settings.rs` for the build-time variables and README.md for flashing.
#![no_std]
#![no_main]

mod settings;

use colony_core::proto::Platform;
use colony_core::worker::Config;
use colony_embassy::{Buffers, TcpLink, Until, Worker, rx_len, tx_len};
use defmt::{error, info, unwrap, warn};
use embassy_executor::Spawner;
use embassy_net::{Ipv4Address, Ipv4Cidr, StackResources, StaticConfigV4};
use embassy_net_wiznet::chip::W5500;
use embassy_net_wiznet::{Device, Runner, State};
use embassy_rp::clocks::RoscRng;
use embassy_rp::flash::{Blocking, Flash};
use embassy_rp::gpio::{Input, Level, Output, Pull};
use embassy_rp::peripherals::{DMA_CH0, DMA_CH1, SPI0};
use embassy_rp::spi::{Async, Config as SpiConfig, Spi};
use embassy_rp::{bind_interrupts, dma};
use embassy_time::Delay;
use embedded_hal_bus::spi::ExclusiveDevice;
use firmware_common::tasks::{KINDS, NAMES};
use settings::{GATEWAY, IP, MAX_FRAME, NAME, SECRET, SERVER, SLOTS, TEST_SECRET};
use static_cell::StaticCell;
use {defmt_rtt as _, panic_probe as _};

bind_interrupts!(struct Irqs {
    DMA_IRQ_0 => dma::InterruptHandler<DMA_CH0>, dma::InterruptHandler<DMA_CH1>;
});

const FLASH_SIZE: usize = 2 * 1024 * 1024;
/// Socket buffer sizes (smoltcp's windows).
const SOCKET_BUF: usize = 1024;
/// Room for one task's output.
const SCRATCH: usize = 256;

type Spi0 = ExclusiveDevice<Spi<'static, SPI0, Async>, Output<'static>, Delay>;

#[embassy_executor::task]
async fn ethernet(runner: Runner<'static, W5500, Spi0, Input<'static>, Output<'static>>) -> ! {
    runner.run().await
}

#[embassy_executor::task]
async fn net(mut runner: embassy_net::Runner<'static, Device<'static>>) -> ! {
    runner.run().await
}

#[embassy_executor::main]
async fn main(spawner: Spawner) {
    let p = embassy_rp::init(Default::default());
    let mut rng = RoscRng;
    if TEST_SECRET {
        warn!("built without COLONY_SECRET: using the public test secret, which guards nothing");
    }

    // A locally administered MAC address from the flash chip's unique id.
    let mut flash = Flash::<_, Blocking, FLASH_SIZE>::new_blocking(p.FLASH);
    let mut uid = [0u8; 8];
    if flash.blocking_unique_id(&mut uid).is_err() {
        rng.fill_bytes(&mut uid);
    }
    let mac = [0x02, uid[3], uid[4], uid[5], uid[6], uid[7]];

    let mut spi_config = SpiConfig::default();
    spi_config.frequency = 50_000_000;
    let spi = Spi::new(
        p.SPI0, p.PIN_18, p.PIN_19, p.PIN_16, p.DMA_CH0, p.DMA_CH1, Irqs, spi_config,
    );
    let cs = Output::new(p.PIN_17, Level::High);
    let Ok(spi) = ExclusiveDevice::new(spi, cs, Delay);
    let int = Input::new(p.PIN_21, Pull::Up);
    let reset = Output::new(p.PIN_20, Level::High);
    static WIZNET: StaticCell<State<4, 4>> = StaticCell::new();
    let (device, runner) =
        match embassy_net_wiznet::new(mac, WIZNET.init(State::new()), spi, int, reset).await {
            Ok(parts) => parts,
            Err(_) => {
                error!("no W5500 answers on SPI0");
                return;
            }
        };
    spawner.spawn(unwrap!(ethernet(runner)));

    let config = match IP {
        Some((ip, prefix)) => embassy_net::Config::ipv4_static(StaticConfigV4 {
            address: Ipv4Cidr::new(Ipv4Address::from(ip), prefix),
            gateway: GATEWAY.map(Ipv4Address::from),
            dns_servers: Default::default(),
        }),
        None => embassy_net::Config::dhcpv4(Default::default()),
    };
    static RESOURCES: StaticCell<StackResources<2>> = StaticCell::new();
    let (stack, runner) = embassy_net::new(
        device,
        config,
        RESOURCES.init(StackResources::new()),
        rng.next_u64(),
    );
    spawner.spawn(unwrap!(net(runner)));
    stack.wait_config_up().await;
    if let Some(config) = stack.config_v4() {
        info!("{=str}: address {}", NAME, config.address);
    }

    let mut rx = [0u8; rx_len(MAX_FRAME)];
    let mut tx = [0u8; tx_len(MAX_FRAME)];
    let mut scratch = [0u8; SCRATCH];
    let mut socket_rx = [0u8; SOCKET_BUF];
    let mut socket_tx = [0u8; SOCKET_BUF];
    let config = Config::new(NAME, &SECRET, &NAMES)
        .with_platform(Platform::Mcu)
        .with_slots(SLOTS as u32)
        .with_max_frame(MAX_FRAME);
    let buffers = Buffers::new(&mut rx, &mut tx, &mut scratch);
    let mut worker = match Worker::<SLOTS>::new(config, &KINDS, buffers) {
        Ok(worker) => worker,
        Err(err) => {
            error!("bad worker configuration: {}", err);
            return;
        }
    };
    let server = (Ipv4Address::from(SERVER.ip), SERVER.port);
    let mut link = TcpLink::new(stack, server, &mut socket_rx, &mut socket_tx);
    let mut entropy = |buf: &mut [u8]| rng.fill_bytes(buf);
    // A board serves job after job: `run` never returns with `Until::Forever`.
    worker.run(&mut link, &mut entropy, Until::Forever).await;
}
