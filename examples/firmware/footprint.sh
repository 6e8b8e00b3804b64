#!/usr/bin/env bash
# Prints the flash and static RAM of each firmware under examples/firmware, and how much of it
# is Colony's.
#
#   examples/firmware/footprint.sh            # builds what is missing, then measures
#   examples/firmware/footprint.sh --no-build # measures the ELFs already built
#
# flash      = every allocated section with contents (code, constants, .data's initial image,
#              vector table, boot loader stage 2, app descriptor): what is written to flash
# static RAM = every allocated writable section (.data, .bss, and on the ESP32-C3 the radio
#              driver's heap): RAM in use before the first function runs. Stacks come on top;
#              every embassy task's future is in .bss. (The ESP32-C3 also runs ~40 KB of code
#              from IRAM, not counted here.)
# colony (symbols) = code and constants in functions of colony_core and colony_embassy that
#              survived inlining: a lower bound
# colony (delta)   = the firmware minus `footprint-baseline`, the same firmware with the worker
#              replaced by a TCP echo loop: code inlined into embassy's tasks included (QEMU only)
#
# Uses `readelf` and `nm` from binutils, or llvm-readelf/llvm-nm (PATH or rustup's llvm-tools).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

build=1
[[ "${1:-}" == "--no-build" ]] && build=0
# Where examples/firmware/.cargo/config.toml sends every firmware build.
TARGET_DIR="../../target/firmware"

find_tool() {
    local name llvm sysroot
    for name in "$@"; do
        if command -v "$name" >/dev/null 2>&1; then
            echo "$name"
            return
        fi
    done
    sysroot="$(rustc --print sysroot 2>/dev/null || true)"
    llvm="$(find "$sysroot/lib/rustlib" -name "llvm-${1#llvm-}" -path '*/bin/*' 2>/dev/null | head -n 1)"
    [[ -n "$llvm" ]] && echo "$llvm"
}
READELF="$(find_tool readelf llvm-readelf)"
NM="$(find_tool nm llvm-nm)"
[[ -n "$READELF" && -n "$NM" ]] || {
    echo "need readelf and nm (binutils) or llvm-readelf and llvm-nm (rustup component add llvm-tools)" >&2
    exit 1
}

# project  target  binary
FIRMWARE=(
    "qemu-mps2 thumbv7m-none-eabi qemu-mps2"
    "qemu-mps2 thumbv6m-none-eabi qemu-mps2"
    "rp2040-w5500 thumbv6m-none-eabi rp2040-w5500"
    "esp32c3 riscv32imc-unknown-none-elf esp32c3"
)

if [[ $build -eq 1 ]]; then
    for project in qemu-mps2 rp2040-w5500 esp32c3; do
        [[ -f "$project/Cargo.toml" ]] || continue
        echo "building $project ..." >&2
        (cd "$project" && env -u CARGO_TARGET_DIR cargo build --release --quiet) >&2
    done
fi

# flash and static RAM from the section headers (see the top of this file).
sizes() {
    "$READELF" -SW "$1" | awk '
        function hex(s,    i, n) {
            n = 0; s = tolower(s)
            for (i = 1; i <= length(s); i++) n = n * 16 + index("0123456789abcdef", substr(s, i, 1)) - 1
            return n
        }
        /^ *\[ *[0-9]+\]/ {
            sub(/^ *\[ *[0-9]+\] */, "")
            name = $1; type = $2; size = hex($5); flags = $7
            if (flags !~ /A/ || name ~ /stack|_dummy/) next
            if (type == "PROGBITS") flash += size
            if (flags ~ /W/) ram += size
        }
        END { printf "%d %d\n", flash, ram }'
}

# Bytes of colony symbols: flash (text, rodata) and RAM (data, bss).
colony_symbols() {
    "$NM" -S -C "$1" 2>/dev/null | awk '
        NF >= 4 && ($0 ~ /colony_core::|colony_embassy::|<colony_/) {
            n = 0; s = tolower($2)
            for (i = 1; i <= length(s); i++) n = n * 16 + index("0123456789abcdef", substr(s, i, 1)) - 1
            t = tolower($3)
            if (t == "t" || t == "r") flash += n; else if (t == "b" || t == "d") ram += n
        }
        END { printf "%d %d\n", flash, ram }'
}

printf '%-34s %10s %10s %16s %16s %12s\n' firmware flash "static RAM" "colony (symbols)" "colony (delta)" "colony RAM"
for entry in "${FIRMWARE[@]}"; do
    read -r project target bin <<<"$entry"
    elf="$TARGET_DIR/$target/release/$bin"
    [[ -f "$elf" ]] || continue
    read -r flash ram < <(sizes "$elf")
    read -r sym_flash _ < <(colony_symbols "$elf")
    delta_flash="-" delta_ram="-"
    base="$TARGET_DIR/$target/release/footprint-baseline"
    if [[ "$project" == qemu-mps2 && -f "$base" ]]; then
        read -r base_flash base_ram < <(sizes "$base")
        delta_flash=$((flash - base_flash))
        delta_ram=$((ram - base_ram))
    fi
    printf '%-34s %10d %10d %16d %16s %12s\n' "$project ($target)" "$flash" "$ram" \
        "$sym_flash" "$delta_flash" "$delta_ram"
done
