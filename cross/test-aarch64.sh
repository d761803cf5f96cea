#!/usr/bin/env bash
# SPDX-License-Identifier: MIT OR Apache-2.0
# Builds the engines' test suite and the daemon's unit tests for aarch64 once, then runs them
# under qemu-user on each core given (default: a Raspberry Pi 4 core without dotprod, and a
# Raspberry Pi 5 core with it). The integration tests (mosquitto, real binary) run natively.
#
#   cross/test-aarch64.sh [cortex-a72 cortex-a76 ...]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cross/install-deps.sh
. cross/env.sh
cores=("$@")
((${#cores[@]})) || cores=(cortex-a72 cortex-a76)

echo "== aarch64: building tests (release)"
"$CARGO" test --release --locked --target "$TRIPLE" -p sotad-engines -p sotad --lib --tests --no-run
for cpu in "${cores[@]}"; do
  echo "== aarch64 tests under qemu -cpu $cpu"
  export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64-static -cpu $cpu"
  "$CARGO" test --release --locked --target "$TRIPLE" -p sotad-engines -p sotad --lib --tests
done
