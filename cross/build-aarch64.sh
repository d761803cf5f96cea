#!/usr/bin/env bash
# SPDX-License-Identifier: MIT OR Apache-2.0
# Cross-builds sotad for aarch64 (release) without docker.
#
#   cross/build-aarch64.sh                 generic build: every 64-bit Pi and Jetson
#   BOARD=pi4 cross/build-aarch64.sh       tuned for Raspberry Pi 4 (cortex-a72)
#   BOARD=pi5 cross/build-aarch64.sh       tuned for Raspberry Pi 5 (cortex-a76)
#   BOARD=orin cross/build-aarch64.sh      tuned for Jetson Orin (cortex-a78ae)
#
# The binary lands in target/aarch64-unknown-linux-gnu/release/sotad (board builds under
# target/board-<board>/...). Extra arguments go to cargo.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cross/install-deps.sh
. cross/env.sh
"$CARGO" build --release --locked --target "$TRIPLE" -p sotad "$@"
bin="${CARGO_TARGET_DIR:-target}/$TRIPLE/release/sotad"
echo "built $bin ($(du -h "$bin" | cut -f1), board ${BOARD:-generic}${CPU:+, -C target-cpu=$CPU})"
