//! An embassy-net driver for the SMSC LAN9118 Ethernet controller as QEMU models it on
//! mps2-an385 (at 0x4020_0000, NVIC line 13), in 32-bit PIO mode.
//!
//! Frames move through the chip's FIFOs by programmed I/O: a received frame is read whole into
//! the driver's receive buffer when embassy-net asks for one; a frame to send is built in the
//! transmit buffer and pushed into the TX FIFO with its two command words. The RX status FIFO
//! level interrupt wakes the network task.
//!
//! Invariants:
//! - The receive waker is registered before the RX status FIFO is checked, so a frame arriving
//!   between the check and the wait always wakes the task.
//! - A frame the buffer cannot hold, or one flagged with an error, is read out and dropped,
//!   never truncated; the FIFOs stay in step with their status words.
//! - Only registers QEMU models are touched (QEMU aborts on any other).
//!
//! This is a test fixture for the emulator: QEMU's model sends a frame the moment its last word
//! is written and never fills the TX FIFO, reports no overruns, and always has link. A driver
//! for the real chip (or the LAN9220 of real MPS2 boards) would need TX-space and link-change
//! interrupts, RX overrun handling and the chip's timing rules.

use core::task::Context;

use embassy_net_driver::{Capabilities, HardwareAddress, LinkState};
use embassy_sync::waitqueue::AtomicWaker;

use crate::regs::Regs;

const ETH: Regs = Regs::at(0x4020_0000);
/// NVIC line of the controller.
pub(crate) const IRQ: u16 = 13;

const RX_DATA: usize = 0x00;
const TX_DATA: usize = 0x20;
const RX_STATUS: usize = 0x40;
const TX_STATUS: usize = 0x48;
const ID_REV: usize = 0x50;
const IRQ_CFG: usize = 0x54;
const INT_STS: usize = 0x58;
const INT_EN: usize = 0x5c;
const BYTE_TEST: usize = 0x64;
const TX_CFG: usize = 0x70;
const HW_CFG: usize = 0x74;
const RX_FIFO_INF: usize = 0x7c;
const TX_FIFO_INF: usize = 0x80;
const PMT_CTRL: usize = 0x84;
const MAC_CSR_CMD: usize = 0xa4;
const MAC_CSR_DATA: usize = 0xa8;

const BYTE_TEST_VALUE: u32 = 0x8765_4321;
const IRQ_CFG_ACTIVE_HIGH: u32 = (1 << 8) | (1 << 4) | (1 << 0); // enable, polarity, push-pull
const INT_RSFL: u32 = 1 << 3;
const TX_CFG_TX_ON: u32 = 1 << 1;
const HW_CFG_SRST: u32 = 1 << 0;
const PMT_CTRL_READY: u32 = 1 << 0;
const CSR_BUSY: u32 = 1 << 31;
const CSR_READ: u32 = 1 << 30;
const MAC_CR: u32 = 1;
const MAC_ADDRH: u32 = 2;
const MAC_ADDRL: u32 = 3;
const MAC_CR_TXEN: u32 = 1 << 3;
const MAC_CR_RXEN: u32 = 1 << 2;
const MAC_CR_FDPX: u32 = 1 << 20;
const RX_STATUS_ERROR: u32 = 1 << 15;
const TX_CMD_A_FIRST: u32 = 1 << 13;
const TX_CMD_A_LAST: u32 = 1 << 12;
/// The frame check sequence the controller leaves at the end of each received frame.
const FCS_LEN: usize = 4;
/// Ethernet header plus the largest IP packet (1500 bytes), without the FCS.
const MTU: usize = 1514;
/// Room for the largest frame with its FCS, in whole words.
const BUF_LEN: usize = 1536;
/// Polls of a status bit before the controller counts as dead.
const SPIN_LIMIT: u32 = 100_000;

static RX_WAKER: AtomicWaker = AtomicWaker::new();

/// The controller did not come up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum InitError {
    /// No LAN9118 answers at the board's address (the byte-order test register was wrong).
    NotFound {
        /// What the byte-order test register read.
        byte_test: u32,
    },
    /// The controller did not finish its reset, or a MAC register access never completed.
    Timeout,
}

impl core::fmt::Display for InitError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            InitError::NotFound { byte_test } => {
                write!(f, "no lan9118 found (byte test read {byte_test:#010x})")
            }
            InitError::Timeout => f.write_str("lan9118 did not respond in time"),
        }
    }
}

/// The LAN9118, ready for [`embassy_net::new`](https://docs.rs/embassy-net).
pub struct Lan9118 {
    mac: [u8; 6],
    id_rev: u32,
    rx: [u8; BUF_LEN],
    tx: [u8; BUF_LEN],
}

impl Lan9118 {
    /// Resets the controller, reads its MAC address (QEMU's `-nic ...,mac=` or its default),
    /// and enables the MAC, the transmitter and the receive interrupt.
    ///
    /// # Errors
    /// [`InitError`] if no controller answers or it does not come out of reset.
    pub(crate) fn new() -> Result<Self, InitError> {
        let byte_test = ETH.read(BYTE_TEST);
        if byte_test != BYTE_TEST_VALUE {
            return Err(InitError::NotFound { byte_test });
        }
        ETH.write(HW_CFG, HW_CFG_SRST);
        spin_until(|| ETH.read(HW_CFG) & HW_CFG_SRST == 0)?;
        spin_until(|| ETH.read(PMT_CTRL) & PMT_CTRL_READY != 0)?;
        let high = mac_read(MAC_ADDRH)?.to_le_bytes();
        let low = mac_read(MAC_ADDRL)?.to_le_bytes();
        let mac = [low[0], low[1], low[2], low[3], high[0], high[1]];
        mac_write(MAC_CR, MAC_CR_TXEN | MAC_CR_RXEN | MAC_CR_FDPX)?;
        ETH.write(TX_CFG, TX_CFG_TX_ON);
        ETH.write(INT_STS, u32::MAX);
        ETH.write(IRQ_CFG, IRQ_CFG_ACTIVE_HIGH);
        ETH.write(INT_EN, INT_RSFL);
        Ok(Lan9118 {
            mac,
            id_rev: ETH.read(ID_REV),
            rx: [0; BUF_LEN],
            tx: [0; BUF_LEN],
        })
    }

    /// The MAC address.
    pub fn mac_address(&self) -> [u8; 6] {
        self.mac
    }

    /// The chip's ID and revision register (0x0118_0001 under QEMU).
    pub fn id_rev(&self) -> u32 {
        self.id_rev
    }

    /// Reads the next good frame into the receive buffer; its length without the FCS.
    fn read_frame(&mut self) -> Option<usize> {
        loop {
            if (ETH.read(RX_FIFO_INF) >> 16) & 0xff == 0 {
                return None;
            }
            let status = ETH.read(RX_STATUS);
            let len = ((status >> 16) & 0x3fff) as usize;
            let words = len.div_ceil(4);
            if status & RX_STATUS_ERROR != 0 || len <= FCS_LEN || len > BUF_LEN {
                for _ in 0..words {
                    ETH.read(RX_DATA);
                }
                continue;
            }
            for chunk in self.rx.chunks_exact_mut(4).take(words) {
                chunk.copy_from_slice(&ETH.read(RX_DATA).to_le_bytes());
            }
            return Some(len - FCS_LEN);
        }
    }
}

/// The receive interrupt: acknowledge it and wake the network task.
pub(crate) fn on_interrupt() {
    ETH.write(INT_STS, INT_RSFL);
    RX_WAKER.wake();
}

fn spin_until(mut done: impl FnMut() -> bool) -> Result<(), InitError> {
    for _ in 0..SPIN_LIMIT {
        if done() {
            return Ok(());
        }
    }
    Err(InitError::Timeout)
}

fn mac_read(reg: u32) -> Result<u32, InitError> {
    ETH.write(MAC_CSR_CMD, CSR_BUSY | CSR_READ | reg);
    spin_until(|| ETH.read(MAC_CSR_CMD) & CSR_BUSY == 0)?;
    Ok(ETH.read(MAC_CSR_DATA))
}

fn mac_write(reg: u32, value: u32) -> Result<(), InitError> {
    ETH.write(MAC_CSR_DATA, value);
    ETH.write(MAC_CSR_CMD, CSR_BUSY | reg);
    spin_until(|| ETH.read(MAC_CSR_CMD) & CSR_BUSY == 0)
}

impl embassy_net_driver::Driver for Lan9118 {
    type RxToken<'a> = RxToken<'a>;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, cx: &mut Context<'_>) -> Option<(RxToken<'_>, TxToken<'_>)> {
        RX_WAKER.register(cx.waker());
        let len = self.read_frame()?;
        let Lan9118 { rx, tx, .. } = self;
        Some((
            RxToken {
                frame: &mut rx[..len],
            },
            TxToken { buf: tx },
        ))
    }

    fn transmit(&mut self, _cx: &mut Context<'_>) -> Option<TxToken<'_>> {
        // QEMU sends each frame as soon as it is written whole: the TX FIFO is always free.
        Some(TxToken { buf: &mut self.tx })
    }

    fn link_state(&mut self, _cx: &mut Context<'_>) -> LinkState {
        LinkState::Up
    }

    fn capabilities(&self) -> Capabilities {
        let mut caps = Capabilities::default();
        caps.max_transmission_unit = MTU;
        caps.max_burst_size = Some(1);
        caps
    }

    fn hardware_address(&self) -> HardwareAddress {
        HardwareAddress::Ethernet(self.mac)
    }
}

/// A received frame, already read out of the FIFO.
pub struct RxToken<'a> {
    frame: &'a mut [u8],
}

impl embassy_net_driver::RxToken for RxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, f: F) -> R {
        f(self.frame)
    }
}

/// Room for one frame to send.
pub struct TxToken<'a> {
    buf: &'a mut [u8; BUF_LEN],
}

impl embassy_net_driver::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let len = len.min(MTU);
        let result = f(&mut self.buf[..len]);
        // One segment, first and last, no offset, 4-byte end alignment; tag 0.
        ETH.write(TX_DATA, TX_CMD_A_FIRST | TX_CMD_A_LAST | len as u32);
        ETH.write(TX_DATA, len as u32);
        for chunk in self.buf[..len.div_ceil(4) * 4].chunks_exact(4) {
            ETH.write(
                TX_DATA,
                u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]),
            );
        }
        // Pop the frame's status word so the status FIFO never fills.
        while (ETH.read(TX_FIFO_INF) >> 16) & 0xff != 0 {
            ETH.read(TX_STATUS);
        }
        result
    }
}
