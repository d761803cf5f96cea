#!/usr/bin/env bash
# SPDX-License-Identifier: MIT OR Apache-2.0
#
# demo.sh — set up a Debian 12 machine, build sotad, and run it on embedded defaults:
# its own MQTT broker on loopback, exercised by a client that pings it and watches its
# status and telemetry. This is the README's first quick-start command.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/setup.sh --models
if ! command -v cargo >/dev/null 2>&1; then export PATH="$HOME/.cargo/bin:$PATH"; fi

cargo build --release --locked -p sotad
exec target/release/sotad demo "$@"
