#!/usr/bin/env bash
# SPDX-License-Identifier: MIT OR Apache-2.0
# Builds sotad's Debian packages with cargo-deb.
#
#   cross/build-deb.sh arm64     cross-built, no docker (BOARD=pi4|pi5|orin to tune; default generic)
#   cross/build-deb.sh amd64     for x86-64-v3 machines (AVX2/FMA), not tuned to this CPU
#   cross/build-deb.sh           both
#
# Packages land in target/debian/. Check one with cross/check-deb.sh PACKAGE.deb.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if ! command -v cargo-deb >/dev/null 2>&1; then
  cargo install cargo-deb --locked
fi
out=target/debian
mkdir -p "$out"
what=${1:-all}

if [ "$what" = arm64 ] || [ "$what" = all ]; then
  cross/build-aarch64.sh
  (
    . cross/env.sh
    # cargo-deb only packages here; dpkg-shlibdeps reads the arm64 libraries from multiarch.
    cargo deb -p sotad --target "$TRIPLE" --no-build --no-strip --output "$out/"
  )
fi
if [ "$what" = amd64 ] || [ "$what" = all ]; then
  # .cargo/config.toml tunes x86 builds to this machine; a package must run on others.
  CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-cpu=x86-64-v3" \
  CARGO_TARGET_DIR=target/deb-amd64 \
    cargo deb -p sotad --output "$out/" -- --locked
fi
ls -l "$out"/*.deb
