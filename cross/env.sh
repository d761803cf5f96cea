# SPDX-License-Identifier: MIT OR Apache-2.0
# Sourced by the cross scripts: Debian's own Rust and multiarch, no docker.
#
#   BOARD=generic|pi4|pi5|orin   CPU tuning (default generic: runs on every 64-bit Pi/Jetson)
#   QEMU_CPU=cortex-a72|...      core that qemu-user emulates when running tests
#
# Debian 12's rustc-web (1.8x/1.9x from bookworm-security) and its arm64 standard library do
# the cross build; the rustup shims come first on PATH, so the compiler is named explicitly.

TRIPLE=aarch64-unknown-linux-gnu
export RUSTC=/usr/bin/rustc
CARGO=/usr/bin/cargo

case "${BOARD:-generic}" in
  generic) CPU= ;;             # armv8-a + NEON; dotprod/i8mm are detected at run time
  pi4)     CPU=cortex-a72 ;;   # Raspberry Pi 4 / CM4: no dotprod
  pi5)     CPU=cortex-a76 ;;   # Raspberry Pi 5: dotprod, fp16
  orin)    CPU=cortex-a78ae ;; # Jetson Orin Nano/NX/AGX: dotprod, fp16
  *) echo "unknown BOARD=${BOARD}; use generic, pi4, pi5 or orin" >&2; return 2 ;;
esac

export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUSTFLAGS="${CPU:+-C target-cpu=$CPU}"
# No `-L /usr/aarch64-linux-gnu`: that sysroot's ld.so (libc6-arm64-cross) would load the
# multiarch libc6:arm64 from /lib/aarch64-linux-gnu, a different glibc build, and the pair
# deadlocks in pthread_create. Without -L, qemu runs the multiarch ld.so and libc together.
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64-static -cpu ${QEMU_CPU:-cortex-a72}"
# C parts (alsa-sys, aws-lc-sys): the cross gcc, and pkg-config pointed at the arm64 libraries.
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
export PKG_CONFIG_ALLOW_CROSS=1
export PKG_CONFIG_LIBDIR=/usr/lib/aarch64-linux-gnu/pkgconfig:/usr/share/pkgconfig
# Board-tuned builds go to their own directory so they never mix with the generic one.
if [ -n "$CPU" ]; then export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/board-$BOARD}"; fi
