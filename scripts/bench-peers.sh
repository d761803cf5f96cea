#!/usr/bin/env bash
# SPDX-License-Identifier: MIT OR Apache-2.0
#
# bench-peers.sh — install the peers that the benchmarks in benches/ run side by side with
# sotad, each in its own Python venv at the path the bench looks for by default. Not needed
# for building or testing (scripts/test.sh); a bench without its peer prints sotad's side only.
#
#   scripts/bench-peers.sh            all of them
#   scripts/bench-peers.sh stt llm    some: stt (faster-whisper), llm (llama-cpp-python,
#                                     built from source for this CPU), tts (piper-tts),
#                                     vad (onnxruntime), wake (pymicro-wakeword)
#
# Idempotent: a venv whose package imports is left alone. The venvs live in /tmp (override
# with BENCH_VENVS=DIR and point the benches at them: STT_REF_PYTHON, SOTAD_BENCH_PYTHON,
# SOTAD_TTS_PYTHON; see each bench's header).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh
DIR="${BENCH_VENVS:-/tmp}"
PEERS=("$@")
if ((${#PEERS[@]} == 0)); then PEERS=(stt llm tts vad wake); fi
if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
  SUDO=
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-venv >/dev/null
fi

# venv DIR MODULE PIP-ARGS...: make DIR unless its python can import MODULE.
venv() {
  local dir="$1" module="$2"
  shift 2
  if [ -x "$dir/bin/python" ] && "$dir/bin/python" -c "import $module" 2>/dev/null; then
    echo "bench-peers: $dir has $module"
    return
  fi
  echo "bench-peers: installing $* into $dir"
  python3 -m venv "$dir"
  "$dir/bin/pip" install -q --upgrade pip
  "$dir/bin/pip" install -q "$@"
}

for p in "${PEERS[@]}"; do
  case "$p" in
    # benches/benches/stt.rs, through scripts/reference/stt_reference.py
    stt) venv "$DIR/venv-stt" faster_whisper faster-whisper==1.2.1 ;;
    # benches/benches/llm.rs: llama.cpp compiled for this CPU, as a user would build it, but
    # without ggml's AMX backend: on this project's Sapphire Rapids machine the native build
    # (GGML_NATIVE=ON turns AMX on) crashes in ggml_backend_amx_mul_mat on the first batch.
    # The flags below are the native ones minus AMX; on a CPU without AVX-512 drop those.
    # Takes several minutes on two cores.
    llm)
      if grep -qw avx512_vnni /proc/cpuinfo; then
        flags="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX_VNNI=ON -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_BF16=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
      else
        flags="-DGGML_NATIVE=ON"
      fi
      CMAKE_ARGS="$flags" venv "$DIR/venv-llm" llama_cpp llama-cpp-python==0.3.36 numpy ;;
    # benches/benches/tts.rs, through scripts/reference/tts_bench_piper.py
    tts) venv "$DIR/venv-tts" piper piper-tts==1.8.0 ;;
    # benches/benches/vad.rs: Silero VAD on onnxruntime
    vad) venv "$DIR/venv-vad" onnxruntime onnxruntime numpy ;;
    # benches/benches/wake.rs and scripts/reference/wake_reference.py: microWakeWord's
    # reference driver (TensorFlow Lite's C library) and front end
    wake) venv "$DIR/venv-wake" pymicro_wakeword pymicro-wakeword==2.5.0 pymicro-features==2.0.2 ;;
    *) echo "bench-peers: unknown peer $p (stt, llm, tts, vad, wake)" >&2; exit 2 ;;
  esac
done
