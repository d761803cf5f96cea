#!/usr/bin/env bash
# SPDX-License-Identifier: MIT OR Apache-2.0
#
# setup.sh — install what building, running and testing sotad needs on Debian 12.
# Idempotent and quick when everything is there. Uses sudo when not run as root.
#
#   scripts/setup.sh            system packages and a Rust toolchain
#   scripts/setup.sh --models   the same, plus the test set of model weights
#                               (scripts/install-models.sh --set test)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

SUDO=
if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; fi

# gcc for crates with C parts (aws-lc for TLS), ALSA headers, the broker and clients that
# the tests run, openssl for the TLS test's certificates, espeak-ng (GPL: its library is loaded
# at run time, or the program is run; never linked) for phonemes, sox for the audio tests and
# the VAD benchmark's noise.
PACKAGES=(build-essential pkg-config cmake libasound2-dev mosquitto mosquitto-clients
          openssl ca-certificates python3 curl espeak-ng sox)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Rust 1.89 or newer (edition 2024; stable AVX-512 intrinsics). Prefer an existing rustup toolchain; otherwise rustup,
# and where its download site is out of reach, Debian's rustc-web (1.8x from bookworm-security).
if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: no cargo found; installing Rust"
  if curl -sSf --max-time 20 https://sh.rustup.rs -o /tmp/rustup-init.sh 2>/dev/null; then
    sh /tmp/rustup-init.sh -y --profile minimal >/dev/null
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    $SUDO apt-get install -y -qq rustc-web cargo-web >/dev/null
  fi
fi
rust_minor=$(rustc --version | sed -E 's/^rustc 1\.([0-9]+).*/\1/')
if [ "$rust_minor" -lt 89 ]; then
  echo "setup: rustc $(rustc --version) is too old; sotad needs 1.89 or newer" >&2
  exit 1
fi

# Python clients the integration tests drive (tests/requirements.txt, pinned) in a venv of
# their own; the tests find it there (test_python in tests/src/lib.rs), or at $SOTAD_TEST_PYTHON.
venv="$HOME/.cache/sotad/venv-tests"
installed=$("$venv/bin/python" -m pip freeze 2>/dev/null || true)
if grep -v -e '^#' -e '^$' tests/requirements.txt | grep -qvxF -f <(echo "$installed"); then
  echo "setup: installing tests/requirements.txt into $venv"
  if ! python3 -c 'import ensurepip' 2>/dev/null; then
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
  fi
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q -r tests/requirements.txt
fi

if [ "${1:-}" = "--models" ]; then
  scripts/install-models.sh --set test
fi
