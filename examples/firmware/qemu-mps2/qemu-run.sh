#!/usr/bin/env bash
# Cargo's runner for this firmware: boots the ELF on QEMU's mps2-an385 with user-mode networking
# (the host's loopback is 10.0.2.2 inside) and decodes the defmt log with defmt-print when it is
# installed (`cargo install defmt-print`); otherwise the binary log goes to uart.log.
#
#   cargo run --release --target thumbv7m-none-eabi
#   COLONY_QEMU_APPEND="server=10.0.2.2:7878 name=board-1" cargo run --release --target thumbv6m-none-eabi
#
# The exit status is the firmware's (0 once the server says the job finished).
set -euo pipefail

elf="$1"
shift
qemu=(qemu-system-arm -M mps2-an385 -nographic -monitor none
    -semihosting-config enable=on,target=native
    -nic user,model=lan9118 -kernel "$elf")
if [[ -n "${COLONY_QEMU_APPEND:-}" ]]; then
    qemu+=(-append "$COLONY_QEMU_APPEND")
fi

if command -v defmt-print >/dev/null 2>&1; then
    set +e
    "${qemu[@]}" -serial stdio "$@" | defmt-print -e "$elf"
    status=("${PIPESTATUS[@]}")
    set -e
    exit "${status[0]}"
else
    echo "defmt-print is not installed: the defmt log goes to uart.log" \
        "(decode it with: defmt-print -e $elf < uart.log)" >&2
    exec "${qemu[@]}" -serial file:uart.log "$@"
fi
