#!/usr/bin/env python3
"""Reference transcripts and timings from faster-whisper for the STT engine.

Setup (not needed by CI; the outputs are committed):
    python3 -m venv /tmp/venv-stt && /tmp/venv-stt/bin/pip install faster-whisper==1.2.1

Modes:
    stt_reference.py fixture [--out engines/tests/data/stt_reference.json]
        Transcribes the five LibriVox clips (speech/librivox/*.wav in the models dir) with
        whisper-tiny.en-ct2 and whisper-base-ct2: compute types float32 and int8 greedy
        (beam_size=1), and float32 with beam_size=5 (key "float32_beam5"); faster-whisper's
        other defaults (temperature fallback 0.0..1.0, best_of=5,
        condition_on_previous_text, no VAD). Writes transcripts, segments and word error
        rates after the normalization below.
    stt_reference.py bench MODEL_DIR COMPUTE_TYPE RUNS WAV...
        Prints one JSON line: per clip, the median wall time of RUNS transcriptions
        (2 CPU threads, beam 1), after one warm-up run, and the transcript.

Normalization for WER (the Rust test uses the same): lowercase; "mister"/"mr." -> "mr";
hyphens to spaces; every character that is not a letter, digit, apostrophe or space removed;
whitespace collapsed. Numbers are not spelled out (the clips have none).
"""
import json
import os
import re
import statistics
import sys
import time

from faster_whisper import WhisperModel


def models_dir():
    return os.environ.get("SOTAD_MODELS_DIR", os.path.expanduser("~/.cache/sotad/models"))


def normalize(text):
    t = text.lower().replace("-", " ")
    t = re.sub(r"[^\w' ]+", " ", t)
    t = t.replace("_", " ")
    words = [w.strip("'") for w in t.split()]
    words = ["mr" if w == "mister" else w for w in words if w]
    return words


def edit_distance(ref, hyp):
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


def clips():
    d = os.path.join(models_dir(), "speech", "librivox")
    refs = {}
    for line in open(os.path.join(d, "transcription")):
        m = re.match(r"<s>(.*)</s> \((.*)\)", line.strip())
        if m:
            refs[m.group(2)] = m.group(1).strip()
    return [(k, os.path.join(d, k + ".wav"), refs[k]) for k in sorted(refs)]


def transcribe(model, wav, beam_size=1):
    segments, info = model.transcribe(wav, beam_size=beam_size, vad_filter=False)
    segs = [{"start": s.start, "end": s.end, "text": s.text} for s in segments]
    return "".join(s["text"] for s in segs).strip(), segs, info.language


def fixture(out):
    result = {"normalization": __doc__.split("Normalization for WER")[1].strip(), "models": {}}
    for name in ["whisper-tiny.en-ct2", "whisper-base-ct2"]:
        for ct, beam in [("float32", 1), ("int8", 1), ("float32", 5)]:
            model = WhisperModel(os.path.join(models_dir(), name), device="cpu", compute_type=ct, cpu_threads=2)
            errs = words = 0
            items = []
            for clip_id, wav, ref in clips():
                text, segs, lang = transcribe(model, wav, beam)
                e = edit_distance(normalize(ref), normalize(text))
                errs += e
                words += len(normalize(ref))
                items.append({"id": clip_id, "reference": ref, "text": text, "language": lang,
                              "segments": segs, "errors": e, "words": len(normalize(ref))})
            key = ct if beam == 1 else f"{ct}_beam{beam}"
            result["models"].setdefault(name, {})[key] = {
                "beam_size": beam, "wer": errs / words, "errors": errs, "words": words, "clips": items}
            print(name, ct, beam, "WER", errs / words, file=sys.stderr)
    with open(out, "w") as f:
        json.dump(result, f, indent=1, ensure_ascii=False)
        f.write("\n")


def bench(model_dir, ct, runs, wavs):
    from faster_whisper.audio import decode_audio
    model = WhisperModel(model_dir, device="cpu", compute_type=ct, cpu_threads=2)
    out = []
    for wav in wavs:
        audio = decode_audio(wav)
        list(model.transcribe(audio, beam_size=1, vad_filter=False)[0])
        times = []
        text = ""
        for _ in range(runs):
            t = time.perf_counter()
            segs, _ = model.transcribe(audio, beam_size=1, vad_filter=False)
            text = "".join(s.text for s in segs).strip()
            times.append(time.perf_counter() - t)
        out.append({"wav": wav, "audio_secs": len(audio) / 16000, "median_secs": statistics.median(times),
                    "text": text})
    print(json.dumps(out))


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "fixture":
        out = sys.argv[3] if len(sys.argv) > 3 and sys.argv[2] == "--out" else "engines/tests/data/stt_reference.json"
        fixture(out)
    elif len(sys.argv) >= 6 and sys.argv[1] == "bench":
        bench(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5:])
    else:
        sys.exit(__doc__)
