#!/usr/bin/env bash
# SPDX-License-Identifier: MIT OR Apache-2.0
# Builds the engines' test suite and the daemon's unit tests for aarch64 once, then runs them
# under qemu-user: all of them on the first core given (default: a Raspberry Pi 4 core,
# without dotprod), and on each further core (default: a Raspberry Pi 5 core, with dotprod)
# the tests whose code paths depend on CPU features: the kernels (quant), the LLM (its
# kernels through whole models), the VAD (its NEON dot products) and the library unit tests.
# On qemu's `max` core (default: last; it has i8mm, which no listed board has) only the
# kernel tests, the LLM tests and the library unit tests run: i8mm changes only the
# prefill products (SMMLA tiles), which those cover, in about 11 s.
# Everything else computes the same way on every aarch64 core, and emulating the real-model
# tests twice would double the longest part of CI. The integration tests (mosquitto, real
# binary) run natively. Test targets that take minutes on x86 already (HEAVY below) run on
# x86 only; the parts of them that exercise aarch64 kernels run here through a filter.
#
#   cross/test-aarch64.sh [cortex-a72 cortex-a76 max ...]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cross/install-deps.sh
. cross/env.sh
cores=("$@")
((${#cores[@]})) || cores=(cortex-a72 cortex-a76 max)

# A 10-minute recording, and Whisper transcriptions in three formats: minutes on x86. And
# stt_transcribe's accuracy runs on base and with beam 5, long-form audio and prompts: the
# same NEON kernels as its greedy tiny.en run, which does run here, and over 10 CPU-minutes of
# emulation on their own (x86 runs them all).
HEAVY=(stt_long stt_formats stt_transcribe)
# The stt_transcribe tests that run under qemu: a whole model on the NEON kernels, and the
# cheap edge cases.
STT_TRANSCRIBE_QEMU=(tiny_en_wer_is_at_most_faster_whispers silence_gives_no_text
  a_raised_cancel_flag_stops_the_transcription wav_of_any_rate_and_channels
  bad_input_is_an_error_not_a_panic)
# Checks on the source tree, the same on every architecture: x86 only.
SOURCE_ONLY=(tidy)
tests=()
for f in engines/tests/*.rs daemon/tests/*.rs; do
  name=$(basename "$f" .rs)
  [[ " ${HEAVY[*]} ${SOURCE_ONLY[*]} " == *" $name "* ]] || tests+=(--test "$name")
done

echo "== aarch64: building tests (release)"
"$CARGO" test --release --locked --no-fail-fast --target "$TRIPLE" -p sotad-engines -p sotad --lib "${tests[@]}" \
  --test stt_formats --test stt_transcribe --no-run
first=1
for cpu in "${cores[@]}"; do
  export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64-static -cpu $cpu"
  if ((first)); then
    echo "== aarch64: all engine and daemon tests under qemu -cpu $cpu"
    "$CARGO" test --release --locked --no-fail-fast --target "$TRIPLE" -p sotad-engines -p sotad --lib "${tests[@]}"
    echo "== aarch64: the weight quantizers of stt_formats under qemu -cpu $cpu"
    "$CARGO" test --release --locked --target "$TRIPLE" -p sotad-engines -p sotad --test stt_formats \
      weight_quantizers
    echo "== aarch64: stt_transcribe's greedy tiny.en run and edge cases under qemu -cpu $cpu"
    "$CARGO" test --release --locked --no-fail-fast --target "$TRIPLE" -p sotad-engines -p sotad \
      --test stt_transcribe -- "${STT_TRANSCRIBE_QEMU[@]}"
    first=0
  elif [[ $cpu == max ]]; then
    echo "== aarch64: the kernel and LLM tests under qemu -cpu max (i8mm)"
    # The same package set as the first pass, so nothing is rebuilt.
    "$CARGO" test --release --locked --no-fail-fast --target "$TRIPLE" -p sotad-engines -p sotad --lib \
      --test quant --test llm
  else
    echo "== aarch64: CPU-feature-dependent tests under qemu -cpu $cpu"
    # The same package set as the first pass, so nothing is rebuilt.
    "$CARGO" test --release --locked --no-fail-fast --target "$TRIPLE" -p sotad-engines -p sotad --lib \
      --test quant --test llm --test llm_real_models --test vad_silero
  fi
done
