//! A Colony worker on an ESP32-C3 over Wi-Fi (esp-hal, esp-rtos, esp-radio).
//!
//! It joins the Wi-Fi network set at build time, takes an address by DHCP, joins the server
//! set at build time and serves job after job, reconnecting to the network and to the server
//! whenever either goes away. Nonces come from the chip's hardware RNG, which the running radio
//! feeds with noise. See `settings.rs` for the build-time variables and README.md for flashing.
#![no_std]
#![no_main]

mod settings;

use colony_core::proto::Platform;
use colony_core::worker::Config;
use colony_embassy::{Buffers, TcpLink, Until, Worker, rx_len, tx_len};
use embassy_executor::Spawner;
use embassy_net::{Ipv4Address, Runner, StackResources};
use embassy_time::Timer;
use esp_backtrace as _;
use esp_hal::clock::CpuClock;
use esp_hal::rng::Rng;
use esp_hal::timer::timg::TimerGroup;
use esp_radio::wifi::sta::StationConfig;
use esp_radio::wifi::{
    AuthenticationMethodConfig, Config as WifiConfig, ControllerConfig, Interface, Password, Ssid,
    WifiController,
};
use firmware_common::tasks::{KINDS, NAMES};
use log::{error, info, warn};
use settings::{MAX_FRAME, NAME, SECRET, SERVER, SLOTS, TEST_SECRET, WIFI_PASSWORD, WIFI_SSID};
use static_cell::StaticCell;

esp_bootloader_esp_idf::esp_app_desc!();

/// Socket buffer sizes (smoltcp's windows).
const SOCKET_BUF: usize = 1024;
/// Room for one task's output.
const SCRATCH: usize = 256;

#[embassy_executor::task]
async fn net(mut runner: Runner<'static, Interface>) -> ! {
    runner.run().await
}

/// Keeps the station connected: connect, wait for the link to drop, connect again.
#[embassy_executor::task]
async fn wifi(mut controller: WifiController<'static>) {
    loop {
        match controller.connect_async().await {
            Ok(_) => {
                info!("wi-fi: connected to {WIFI_SSID}");
                let _ = controller.wait_for_disconnect_async().await;
                warn!("wi-fi: disconnected");
            }
            Err(err) => {
                warn!("wi-fi: cannot connect to {WIFI_SSID}: {err:?}");
                Timer::after_secs(5).await;
            }
        }
    }
}

#[esp_rtos::main]
async fn main(spawner: Spawner) {
    esp_println::logger::init_logger(log::LevelFilter::Info);
    let peripherals = esp_hal::init(esp_hal::Config::default().with_cpu_clock(CpuClock::max()));
    // The radio's driver allocates; nothing else does.
    esp_alloc::heap_allocator!(#[esp_hal::ram(reclaimed)] size: 64 * 1024);
    let timg0 = TimerGroup::new(peripherals.TIMG0);
    esp_rtos::start(timg0.timer0, peripherals.FROM_CPU_INTR0);
    if TEST_SECRET {
        warn!("built without COLONY_SECRET: using the public test secret, which guards nothing");
    }
    // Checked at run time (`black_box`): a build without an SSID keeps the whole firmware, so
    // that what the check script builds and measures is what a board runs.
    if core::hint::black_box(WIFI_SSID).is_empty() {
        error!("built without COLONY_WIFI_SSID: there is no network to join");
        return;
    }

    let (Ok(ssid), Ok(password)) = (Ssid::try_from(WIFI_SSID), Password::try_from(WIFI_PASSWORD))
    else {
        error!("COLONY_WIFI_SSID or COLONY_WIFI_PASSWORD is too long");
        return;
    };
    let authentication = if WIFI_PASSWORD.is_empty() {
        AuthenticationMethodConfig::Open
    } else {
        AuthenticationMethodConfig::Wpa2Personal(password)
    };
    let station = StationConfig::default()
        .with_ssid(ssid)
        .with_authentication(authentication);
    let controller = match WifiController::new(
        peripherals.WIFI,
        ControllerConfig::default().with_initial_config(WifiConfig::Station(station)),
    ) {
        Ok(controller) => controller,
        Err(err) => {
            error!("wi-fi: cannot start the radio: {err:?}");
            return;
        }
    };
    let interface = Interface::station();

    // With the radio on, the RNG is fed by physical noise: fit for handshake nonces.
    let rng = Rng::new();
    let seed = (u64::from(rng.random()) << 32) | u64::from(rng.random());
    static RESOURCES: StaticCell<StackResources<2>> = StaticCell::new();
    let (stack, runner) = embassy_net::new(
        interface,
        embassy_net::Config::dhcpv4(Default::default()),
        RESOURCES.init(StackResources::new()),
        seed,
    );
    match (net(runner), wifi(controller)) {
        (Ok(net), Ok(wifi)) => {
            spawner.spawn(net);
            spawner.spawn(wifi);
        }
        _ => {
            error!("cannot spawn the network tasks");
            return;
        }
    }
    stack.wait_config_up().await;
    if let Some(config) = stack.config_v4() {
        info!("{NAME}: address {}", config.address);
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
            error!("bad worker configuration: {err}");
            return;
        }
    };
    let server = (Ipv4Address::from(SERVER.ip), SERVER.port);
    let mut link = TcpLink::new(stack, server, &mut socket_rx, &mut socket_tx);
    let mut entropy = |buf: &mut [u8]| rng.read(buf);
    // A board serves job after job: `run` never returns with `Until::Forever`.
    worker.run(&mut link, &mut entropy, Until::Forever).await;
}
