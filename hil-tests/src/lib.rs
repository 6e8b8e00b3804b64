//! Host-side tests that boot emulated microcontroller workers in QEMU against the real server.
