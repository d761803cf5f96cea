#!/usr/bin/env python3
# SPDX-License-Identifier: MIT OR Apache-2.0
"""piper-tts's side of benches/tts.rs: time piper-tts synthesizing texts, in-process.

Usage (the bench runs it as a subprocess; venv as in tts_reference.py):

    /tmp/venv-tts/bin/python scripts/reference/tts_bench_piper.py VOICE.onnx THREADS RUNS < texts.json

stdin: a JSON list of texts. stdout: one JSON object per text, with the wall times of each run
(after one warm-up): `first_audio_ms` (until piper-tts yields the first sentence's audio),
`total_ms`, and `audio_secs`. The voice is loaded once, with an onnxruntime session limited to
THREADS intra-op threads (piper-tts's own loader uses onnxruntime's default); synthesis uses
piper-tts's defaults (the voice's noise and length scales).
"""
import json
import sys
import time

import onnxruntime
from piper import PiperVoice


def main():
    model, threads, runs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    texts = json.load(sys.stdin)
    voice = PiperVoice.load(model)
    opts = onnxruntime.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    voice.session = onnxruntime.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])
    rate = voice.config.sample_rate
    for text in texts:
        first, total, secs = [], [], 0.0
        for run in range(runs + 1):
            t0 = time.perf_counter()
            t_first = None
            samples = 0
            for chunk in voice.synthesize(text):
                if t_first is None:
                    t_first = time.perf_counter()
                samples += len(chunk.audio_float_array)
            t1 = time.perf_counter()
            if run == 0:
                continue  # warm-up
            first.append((t_first - t0) * 1e3)
            total.append((t1 - t0) * 1e3)
            secs = samples / rate
        print(json.dumps({"text": text, "first_audio_ms": first, "total_ms": total, "audio_secs": secs}), flush=True)


if __name__ == "__main__":
    main()
