#!/usr/bin/env bash
# SPDX-License-Identifier: MIT OR Apache-2.0
#
# test.sh — set up a Debian 12 machine and run sotad's whole test suite.
# This is the README's test command, and what CI (.ci/run) runs.
#
# One release build serves everything on x86: the daemon binary that the integration tests
# start, and the test harnesses (which share its compiled dependencies). Then one aarch64
# release build of the engines' and daemon's unit tests, run under qemu on two cores, and its
# kernel tests on a third (qemu's `max`, with i8mm).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/setup.sh --models
if ! command -v cargo >/dev/null 2>&1; then export PATH="$HOME/.cargo/bin:$PATH"; fi

# A persistent build cache outside the clone, where the machine lets us write one: a clean
# clone on a warm machine then compiles only what changed; a bare machine builds from nothing
# as before. The directory is keyed by the CPU's model and flags, because x86 builds use
# `-C target-cpu=native` (.cargo/config.toml) and cargo's fingerprint does not see the CPU.
if [ -z "${CARGO_TARGET_DIR:-}" ]; then
  cache=/var/cache/sotad
  if mkdir -p "$cache" 2>/dev/null && [ -w "$cache" ]; then
    cpu_key=$(grep -m2 -E '^(model name|flags)' /proc/cpuinfo | sha256sum | cut -c1-12)
    export CARGO_TARGET_DIR="$cache/target-$cpu_key"
    # Stale artifacts pile up over many runs: start afresh past 40 GiB.
    if [ -d "$CARGO_TARGET_DIR" ] && (( $(du -s --block-size=1G "$CARGO_TARGET_DIR" | cut -f1) > 40 )); then
      rm -rf "$CARGO_TARGET_DIR"
    fi
    echo "== build cache: $CARGO_TARGET_DIR"
  fi
fi

echo "== build (release)"
cargo build --release --locked -p sotad
echo "== tests"
cargo test --release --locked --workspace --no-fail-fast

echo "== aarch64: cross build, and the engines' and daemon's unit tests under qemu (Pi 4 and Pi 5 cores, and max for i8mm)"
cross/test-aarch64.sh cortex-a72 cortex-a76 max
