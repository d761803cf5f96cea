#!/usr/bin/env python3
"""Reference Silero VAD probabilities from onnxruntime, for engines/tests/vad_real_model.rs.

Setup (once):  python3 -m venv /tmp/venv-vad && /tmp/venv-vad/bin/pip install onnxruntime numpy
Run:           /tmp/venv-vad/bin/python scripts/reference/vad_reference.py \
                   > engines/tests/data/vad/reference_probs.txt

Input audio: a LibriVox clip from the models dir (16 kHz mono s16), with PRE_S seconds of
digital silence before it and POST_S after, zero-padded to a whole number of 512-sample
windows. Each window is fed the way silero-vad's own OnnxWrapper does: the last 64 samples
of the previous window (zeros for the first) are prepended, so the model sees 576 samples,
and the LSTM state (2, 1, 128) is carried from one call to the next, starting at zero.
"""
import os
import sys
import wave

import numpy as np
import onnxruntime as ort

MODELS = os.environ.get("SOTAD_MODELS_DIR", os.path.expanduser("~/.cache/sotad/models"))
CLIP = "sense_and_sensibility_01_austen_64kb-0880.wav"
MODEL = "silero_vad_16k_op15.onnx"
PRE_S, POST_S = 0.5, 1.0
WINDOW, CONTEXT, SR = 512, 64, 16000


def load_clip(path):
    with wave.open(path, "rb") as w:
        assert w.getframerate() == SR and w.getnchannels() == 1 and w.getsampwidth() == 2
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    return pcm.astype(np.float32) / 32768.0


def probabilities(model_path, audio):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(model_path, sess_options=opts, providers=["CPUExecutionProvider"])
    state = np.zeros((2, 1, 128), dtype=np.float32)
    context = np.zeros((1, CONTEXT), dtype=np.float32)
    sr = np.array(SR, dtype=np.int64)
    out = []
    for start in range(0, len(audio), WINDOW):
        x = np.concatenate([context, audio[None, start:start + WINDOW]], axis=1)
        prob, state = sess.run(None, {"input": x, "state": state, "sr": sr})
        context = x[:, -CONTEXT:]
        out.append(float(prob[0, 0]))
    return out


def main():
    clip = load_clip(os.path.join(MODELS, "speech", "librivox", CLIP))
    audio = np.concatenate([
        np.zeros(int(PRE_S * SR), np.float32), clip, np.zeros(int(POST_S * SR), np.float32)])
    audio = np.concatenate([audio, np.zeros((-len(audio)) % WINDOW, np.float32)])
    probs = probabilities(os.path.join(MODELS, "silero-vad", MODEL), audio)
    # The full model (8k and 16k branches in If subgraphs) should agree; report, don't fail.
    full = probabilities(os.path.join(MODELS, "silero-vad", "silero_vad.onnx"), audio)
    print(f"max |op15 - silero_vad.onnx| = {max(abs(a - b) for a, b in zip(probs, full)):.3g}",
          file=sys.stderr)
    print(f"# silero-vad {MODEL}, onnxruntime {ort.__version__}, clip {CLIP}")
    print(f"# pre_s={PRE_S} post_s={POST_S} window={WINDOW} context={CONTEXT} windows={len(probs)}")
    for p in probs:
        print(f"{p:.8f}")


if __name__ == "__main__":
    main()
