#!/usr/bin/env python3
# SPDX-License-Identifier: MIT OR Apache-2.0
"""piper-tts's side of benches/tts.rs: time piper-tts synthesizing texts, in-process.

Usage (the bench runs it as a subprocess; venv as in tts_reference.py):

    /tmp/venv-tts/bin/python scripts/reference/tts_bench_piper.py VOICE.onnx THREADS

It loads the voice once, with an onnxruntime session limited to THREADS intra-op threads
(piper-tts's own loader uses onnxruntime's default), prints "ready", then reads one JSON
string (a text) per stdin line and answers each with one JSON line: `first_audio_ms` (until
piper-tts yields the first sentence's audio), `total_ms`, `cpu_ms` (user + system CPU time of
the process, all threads) and `audio_secs`. Synthesis uses
piper-tts's defaults (the voice's noise and length scales, peak normalization). The bench
alternates requests with sotad's runs, so both see the same machine load.
"""
import json
import resource
import sys
import time

import onnxruntime
from piper import PiperVoice


def main():
    model, threads = sys.argv[1], int(sys.argv[2])
    voice = PiperVoice.load(model)
    opts = onnxruntime.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    voice.session = onnxruntime.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])
    rate = voice.config.sample_rate
    print("ready", flush=True)
    for line in sys.stdin:
        text = json.loads(line)
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        t_first = None
        samples = 0
        for chunk in voice.synthesize(text):
            if t_first is None:
                t_first = time.perf_counter()
            samples += len(chunk.audio_float_array)
        t1 = time.perf_counter()
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
        print(json.dumps({"first_audio_ms": (t_first - t0) * 1e3, "total_ms": (t1 - t0) * 1e3, "cpu_ms": cpu * 1e3, "audio_secs": samples / rate}), flush=True)


if __name__ == "__main__":
    main()
