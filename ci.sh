#!/usr/bin/env bash
# Every check a change to Colony passes, as one bash function per step.
#
#   ./ci.sh                 run every step, cheapest first, the full test suite last
#   ./ci.sh <step> [args]   run one step; `test` passes its args on to `cargo test`
#   ./ci.sh list            name the steps
#
# Run with no arguments, it first prepares the machine (.ci/prepare: toolchain targets and
# components, a nightly toolchain and cargo-fuzz, qemu-system-arm and chromium from apt),
# installing only what is missing; a single step installs nothing. A step whose tool is missing
# fails with the reason; no step is ever skipped in silence. `.ci/run` (CI's entry) calls this.
#
# Knobs (environment):
#   FUZZ_SECONDS    seconds per fuzz target (default 20)
#   FUZZ_TOOLCHAIN  toolchain for cargo-fuzz (default nightly; with the pinned stable one, also set
#                   RUSTC_BOOTSTRAP=1, or pass FUZZ_SANITIZER=none)
#   FUZZ_SANITIZER  sanitizer for cargo-fuzz (default address)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# QEMU-backed tests must fail, not skip, when qemu-system-arm is missing.
export COLONY_REQUIRE_QEMU=1

STEPS=(fmt clippy doc nostd firmware hil fuzz quickstart test)

# Targets colony-core must build for without std: RP2040 (no atomic CAS), Cortex-M3, ESP32-C3.
NOSTD_TARGETS=(
    thumbv6m-none-eabi
    thumbv7m-none-eabi
    riscv32imc-unknown-none-elf
)
# Each feature alone (on top of --no-default-features). `defmt` and `log` together is a
# compile_error! by design, so that pair is never built.
NOSTD_FEATURES=(
    ""
    "alloc"
    "defmt"
    "log"
)
HOST_FEATURES=(
    ""
    "alloc"
    "std"
    "defmt"
    "log"
    "std,log"
)
# Integration tests heavy enough to want an optimised build: "package:test-target" pairs, run
# with --release by the test step before the debug run of the whole workspace.
RELEASE_TESTS=()

FUZZ_SECONDS="${FUZZ_SECONDS:-20}"
FUZZ_TOOLCHAIN="${FUZZ_TOOLCHAIN:-nightly}"
FUZZ_SANITIZER="${FUZZ_SANITIZER:-address}"

# Progress goes to stderr, so that stdout ends with the test runner's own summary.
note() { printf '%s\n' "$*" >&2; }
run() {
    note "+ $*"
    "$@"
}
fail() {
    note "error: $*"
    exit 1
}
need() {
    command -v "$1" >/dev/null 2>&1 || fail "$1 is not installed ($2)"
}

# The cargo projects outside the main workspace: the fuzz workspace and each firmware project.
own_projects() {
    local dir
    echo fuzz
    for dir in examples/firmware/*/; do
        [[ -f "$dir/Cargo.toml" ]] && echo "${dir%/}"
    done
    return 0
}

ci_fmt() {
    run cargo fmt --all --check
    local dir
    for dir in $(own_projects); do
        run cargo fmt --check --manifest-path "$dir/Cargo.toml"
    done
}

ci_clippy() {
    run cargo clippy --workspace --all-targets -- -D warnings
}

ci_doc() {
    RUSTDOCFLAGS="-D warnings" run cargo doc --workspace --no-deps
}

build_core() {
    local features="$1"
    shift
    run cargo build -p colony-core --no-default-features ${features:+--features "$features"} "$@"
}

ci_nostd() {
    local target features
    for target in "${NOSTD_TARGETS[@]}"; do
        for features in "${NOSTD_FEATURES[@]}"; do
            build_core "$features" --target "$target"
        done
    done
    for features in "${HOST_FEATURES[@]}"; do
        build_core "$features"
    done
    # The microcontroller worker: no_std, no allocator, with each logging feature.
    for target in thumbv6m-none-eabi riscv32imc-unknown-none-elf; do
        for features in "" defmt log; do
            run cargo build -p colony-embassy --target "$target" ${features:+--features "$features"}
        done
    done
}

ci_fuzz() {
    rustup run "$FUZZ_TOOLCHAIN" rustc --version >/dev/null 2>&1 ||
        fail "toolchain $FUZZ_TOOLCHAIN is not installed (.ci/run installs nightly)"
    cargo "+$FUZZ_TOOLCHAIN" fuzz --version >/dev/null 2>&1 ||
        fail "cargo-fuzz is not installed (cargo install cargo-fuzz --locked)"
    local targets target
    mapfile -t targets < <(cargo "+$FUZZ_TOOLCHAIN" fuzz list)
    [[ ${#targets[@]} -gt 0 ]] || fail "fuzz/ declares no fuzz targets"
    run cargo "+$FUZZ_TOOLCHAIN" fuzz build --sanitizer "$FUZZ_SANITIZER"
    for target in "${targets[@]}"; do
        run cargo "+$FUZZ_TOOLCHAIN" fuzz run --sanitizer "$FUZZ_SANITIZER" "$target" -- \
            -max_total_time="$FUZZ_SECONDS"
    done
}

ci_firmware() {
    local dirs=() dir
    shopt -s nullglob
    dirs=(examples/firmware/*/)
    shopt -u nullglob
    if [[ ${#dirs[@]} -eq 0 ]]; then
        note "firmware: there is no firmware yet (no project under examples/firmware/), nothing to build"
        return
    fi
    for dir in "${dirs[@]}"; do
        [[ -f "$dir/Cargo.toml" ]] || fail "$dir has no Cargo.toml"
        # Each firmware project is its own cargo project: its .cargo/config.toml picks the target.
        (cd "$dir" && run cargo build --release && run cargo clippy --release -- -D warnings)
    done
    run cargo test --manifest-path examples/firmware/common/Cargo.toml
    # Flash and static RAM of each firmware, and of Colony's part alone.
    run examples/firmware/footprint.sh --no-build
}

ci_hil() {
    shopt -s nullglob
    local firmware=(examples/firmware/*/)
    shopt -u nullglob
    if [[ ${#firmware[@]} -eq 0 ]]; then
        note "hil: there is no firmware yet, so no QEMU test boots a board; running colony-hil-tests as it is"
    else
        need qemu-system-arm "apt-get install -y qemu-system-arm, or run ./ci.sh with no arguments"
    fi
    run cargo test -p colony-hil-tests
}

ci_quickstart() {
    # The README's first command, the main job, exactly as a newcomer runs it; then the
    # simulation demo of the core.
    run cargo run --release -p colony-examples --bin quickstart
    run cargo run --release -p colony-core --example simulate
}

ci_test() {
    local pair
    for pair in "${RELEASE_TESTS[@]}"; do
        run cargo test --release -p "${pair%%:*}" --test "${pair#*:}" "$@"
    done
    # The QEMU tests run in the hil step.
    run cargo test --workspace --exclude colony-hil-tests "$@"
}

run_step() {
    local step="$1" start=$SECONDS
    shift
    note ""
    note "==> $step"
    "ci_$step" "$@"
    note "<== $step ok ($((SECONDS - start)) s)"
}

is_step() {
    local s
    for s in "${STEPS[@]}"; do
        [[ "$s" == "$1" ]] && return 0
    done
    return 1
}

main() {
    if [[ $# -eq 0 || "$1" == "all" ]]; then
        local step total=$SECONDS
        ./.ci/prepare
        for step in "${STEPS[@]}"; do
            run_step "$step"
        done
        note ""
        note "all steps passed (${STEPS[*]}) in $((SECONDS - total)) s"
    elif [[ "$1" == "list" ]]; then
        printf '%s\n' "${STEPS[@]}"
    elif is_step "$1"; then
        run_step "$@"
    else
        fail "unknown step '$1' (steps: ${STEPS[*]})"
    fi
}

main "$@"
