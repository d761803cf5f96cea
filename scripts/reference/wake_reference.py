#!/usr/bin/env python3
"""Reference microWakeWord features and per-step model outputs, for engines/tests/wake.rs.

Setup (once):  python3 -m venv /tmp/venv-wake && /tmp/venv-wake/bin/pip install \
                   pymicro-wakeword==2.5.0 pymicro-features==2.0.2
Run:           /tmp/venv-wake/bin/python scripts/reference/wake_reference.py

Clips: engines/tests/data/wake/{hey_jarvis,okay_nabu}.wav (sotad's Piper voice en_US-joe-medium,
`sotad say "Hey Jarvis, what time is it?"`, resampled to 16 kHz with sox, 0.3 s of silence
before, cut at 1.6 s) and a LibriVox clip from the installed speech set (no wake word).

Writes, in engines/tests/data/wake/:
  features_<clip>.bin  every frame of pymicro-features' MicroFrontend on the clip, 40 little-endian
                       u16 per frame (the reference's floats divided by its scale 0.0390625,
                       which is exact).
  reference.txt        per clip and model: the model's raw uint8 output at every inference step
                       (TensorFlow Lite's C library, as pymicro-wakeword drives it: 3 frames per
                       step) and the index of the first frame at which pymicro-wakeword reports
                       a detection (-1: none).
"""
import os
import wave

import numpy as np
from pymicro_wakeword import MicroWakeWord, MicroWakeWordFeatures, Model

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "..", "engines", "tests", "data", "wake")
MODELS = os.environ.get("SOTAD_MODELS_DIR", os.path.expanduser("~/.cache/sotad/models"))
CLIPS = {
    "hey_jarvis": os.path.join(DATA, "hey_jarvis.wav"),
    "okay_nabu": os.path.join(DATA, "okay_nabu.wav"),
    "librivox_0880": os.path.join(
        MODELS, "speech", "librivox", "sense_and_sensibility_01_austen_64kb-0880.wav"),
}
FEATURE_FILES = ("hey_jarvis", "librivox_0880")


def read_pcm(path):
    with wave.open(path, "rb") as w:
        assert w.getframerate() == 16000 and w.getnchannels() == 1 and w.getsampwidth() == 2
        return w.readframes(w.getnframes())


def main():
    lines = ["# scripts/reference/wake_reference.py: pymicro-wakeword 2.5.0, pymicro-features 2.0.2",
             "# clip model first_detection_frame outputs..."]
    for name, path in CLIPS.items():
        pcm = read_pcm(path)
        feats = list(MicroWakeWordFeatures().process_streaming(pcm))
        if name in FEATURE_FILES:
            raw = np.concatenate([f.reshape(-1) for f in feats]) / 0.0390625
            assert np.all(raw == np.round(raw))
            raw.astype("<u2").tofile(os.path.join(DATA, f"features_{name}.bin"))
        for model in Model:
            mww = MicroWakeWord.from_builtin(model)
            outputs, first = [], -1
            for i, f in enumerate(feats):
                detected = mww.process_streaming(f)
                if not mww._features:
                    # A step ran: its dequantized output is the newest probability.
                    outputs.append(round(mww._probabilities[-1] / 0.00390625))
                if detected and first < 0:
                    first = i
            lines.append(f"{name} {model.value} {first} " + " ".join(map(str, outputs)))
            mww.close()
    with open(os.path.join(DATA, "reference.txt"), "w", encoding="utf-8") as out:
        out.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
