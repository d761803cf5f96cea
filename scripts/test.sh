#!/usr/bin/env bash
# SPDX-License-Identifier: MIT OR Apache-2.0
#
# test.sh — set up a Debian 12 machine and run sotad's whole test suite.
# This is the README's test command, and what CI (.ci/run) runs.
#
# One release build serves everything: the daemon binary that the integration tests start,
# and the test harnesses (which share its compiled dependencies).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/setup.sh --models
if ! command -v cargo >/dev/null 2>&1; then export PATH="$HOME/.cargo/bin:$PATH"; fi

echo "== build (release)"
cargo build --release --locked -p sotad
echo "== tests"
cargo test --release --locked --workspace
