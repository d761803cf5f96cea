#!/usr/bin/env python3
"""Reference Smart Turn v3.2 probabilities from onnxruntime, for engines/tests/turn.rs and the
turn bench (benches/benches/turn.rs).

Setup (once):
    python3 -m venv /tmp/venv-turn && /tmp/venv-turn/bin/pip install onnxruntime numpy
    pip download pipecat-ai==1.14.0 --no-deps -d /tmp/pipecat && \
        (cd /tmp/pipecat && unzip -o -q pipecat_ai-1.14.0-py3-none-any.whl)
Run (the test table):
    PIPECAT_DIR=/tmp/pipecat /tmp/venv-turn/bin/python scripts/reference/smart_turn_reference.py \
        > engines/tests/data/turn/reference_probs.txt
Run (any 16 kHz mono s16 WAV or raw files, each whole and cut; what the bench calls):
    PIPECAT_DIR=/tmp/pipecat python3 scripts/reference/smart_turn_reference.py --bench FILE...

The audio goes through Pipecat's own code: `LocalSmartTurnAnalyzerV3._predict_endpoint`'s
steps (the last 8 s, zero-padded at the start), `compute_whisper_log_mel_features` from the
wheel's `_whisper_features.py`, and an onnxruntime session with the options Pipecat sets
(sequential, one thread, ORT_ENABLE_ALL). Each line: clip, samples used (a prefix of the
clip: whole, or cut mid-utterance, at the fractions in SMART_TURN_CUTS, default 1.0,0.6),
probability; then the median time per decision (features + network) and of the network alone.
"""
import importlib.util
import os
import sys
import time
import wave

import numpy as np
import onnxruntime as ort

MODELS = os.environ.get("SOTAD_MODELS_DIR", os.path.expanduser("~/.cache/sotad/models"))
MODEL = os.path.join(MODELS, "smart-turn", "smart-turn-v3.2-cpu.onnx")
# The test table: two short utterances, each whole and cut at 60 % (mid-sentence).
CLIPS = ["speech/cards/001.wav", "speech/goforward.raw"]
CUTS = [float(c) for c in os.environ.get("SMART_TURN_CUTS", "1.0,0.6").split(",")]


def features_module():
    base = os.environ.get("PIPECAT_DIR")
    if not base:
        sys.exit("set PIPECAT_DIR to the unpacked pipecat-ai==1.14.0 wheel (see the docstring)")
    path = os.path.join(base, "pipecat/audio/turn/smart_turn/_whisper_features.py")
    spec = importlib.util.spec_from_file_location("whisper_features", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def load(path):
    if path.endswith(".raw"):
        pcm = np.fromfile(path, dtype="<i2")
    else:
        with wave.open(path, "rb") as w:
            assert w.getframerate() == 16000 and w.getnchannels() == 1 and w.getsampwidth() == 2
            pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    return pcm.astype(np.float32) / 32768.0


def session():
    so = ort.SessionOptions()
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.inter_op_num_threads = 1
    so.intra_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(MODEL, sess_options=so, providers=["CPUExecutionProvider"])


def predict(sess, feats_mod, audio):
    n = 8 * 16000
    audio = audio[-n:] if len(audio) > n else np.pad(audio, (n - len(audio), 0))
    log_mel = feats_mod.compute_whisper_log_mel_features(audio, do_normalize=True)
    t0 = time.perf_counter()
    p = float(sess.run(None, {"input_features": log_mel[None]})[0][0].item())
    return p, time.perf_counter() - t0


def main():
    feats_mod = features_module()
    sess = session()
    bench = len(sys.argv) > 1 and sys.argv[1] == "--bench"
    clips = sys.argv[2:] if bench else [os.path.join(MODELS, c) for c in CLIPS]
    print(f"# smart-turn-v3.2-cpu.onnx, onnxruntime {ort.__version__}: clip samples probability")
    times, runs = [], []
    for path in clips:
        audio = load(path)
        for cut in CUTS:
            k = int(len(audio) * cut)
            t0 = time.perf_counter()
            p, run_s = predict(sess, feats_mod, audio[:k])
            times.append(time.perf_counter() - t0)
            runs.append(run_s)
            name = path if bench else os.path.relpath(path, MODELS)
            print(f"{name} {k} {p:.9g}")
    times.sort()
    runs.sort()
    print(f"# median_ms {1000 * times[len(times) // 2]:.3f} network_ms {1000 * runs[len(runs) // 2]:.3f}")


if __name__ == "__main__":
    main()
