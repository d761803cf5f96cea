#!/usr/bin/env python3
# SPDX-License-Identifier: MIT OR Apache-2.0
"""Write phoneme_ids.tsv: what Piper's own phonemizer produces for a few sentences.

engines/tests/tts_phonemize.rs compares sotad's ids (espeak-ng CLI output mapped by
sotad_engines::tts::phonemize) with these.

Setup (a virtualenv, so the system Python stays clean):

    python3 -m venv /tmp/piper-venv
    /tmp/piper-venv/bin/pip install piper-tts==1.8.0
    /tmp/piper-venv/bin/python engines/tests/data/piper/make_phoneme_ids.py \
        ~/.cache/sotad/models/piper/en_US-joe-medium.onnx.json \
        > engines/tests/data/piper/phoneme_ids.tsv

It uses piper-tts's phonemizer exactly as PiperVoice.phonemize does (its bundled espeak-ng
library and data through piper.espeakbridge, then piper.phoneme_ids.phonemes_to_ids with the
voice's phoneme_id_map); onnxruntime is not needed. Output: a header comment, then one line per
text: text, TAB, the phonemes of each sentence joined by " | ", TAB, the ids of each sentence
(space-separated) joined by " | ".
"""
import json
import sys
from importlib.metadata import version

from piper.phoneme_ids import phonemes_to_ids
from piper.phonemize_espeak import EspeakPhonemizer

TEXTS = [
    "Hello, world! This is sotad speaking.",
    "The quick brown fox jumps over the lazy dog.",
    "It's 5 o'clock; time for tea, isn't it?",
    "Dr. Smith paid $3.50 for 12 apples: what a deal!",
    "Wait... what?! No way.",
]


def main():
    with open(sys.argv[1], encoding="utf-8") as f:
        config = json.load(f)
    voice = config["espeak"]["voice"]
    id_map = config["phoneme_id_map"]
    phonemizer = EspeakPhonemizer()
    print(f"# piper-tts {version('piper-tts')}, espeak voice {voice}; see make_phoneme_ids.py")
    for text in TEXTS:
        sentences = phonemizer.phonemize(voice, text)
        phonemes = " | ".join("".join(s) for s in sentences)
        ids = " | ".join(" ".join(str(i) for i in phonemes_to_ids(s, id_map)) for s in sentences)
        assert "\t" not in text and "\t" not in phonemes
        print(f"{text}\t{phonemes}\t{ids}")


if __name__ == "__main__":
    main()
