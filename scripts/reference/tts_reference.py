#!/usr/bin/env python3
# SPDX-License-Identifier: MIT OR Apache-2.0
"""Reference waveforms for sotad's Piper (VITS) engine, from piper-tts's own runtime.

engines/tests/tts_vits.rs synthesizes the same phoneme ids with sotad and compares the
waveform with these (correlation and exact length).

Setup (a virtualenv under /tmp, so the system Python stays clean):

    python3 -m venv /tmp/venv-tts
    /tmp/venv-tts/bin/pip install piper-tts==1.8.0      # brings onnxruntime and numpy
    /tmp/venv-tts/bin/python scripts/reference/tts_reference.py \
        ~/.cache/sotad/models/piper/en_US-joe-medium.onnx engines/tests/data/piper

It runs the voice exactly as piper-tts's PiperVoice.phoneme_ids_to_audio does (an
onnxruntime InferenceSession on the .onnx file, inputs `input` [1, T] int64, `input_lengths`
[1] int64 and `scales` [noise_scale, length_scale, noise_w] float32), with noise_scale = 0 and
noise_w = 0 so the output is deterministic. The ids are piper-tts's own (phoneme_ids.tsv,
made by make_phoneme_ids.py).

Writes, for each case: `vits_<name>.ids` (the ids, space-separated, one line) and
`vits_<name>.f32` (the waveform, float32 little endian, as the model outputs it: before
Piper's int16 conversion). With --debug DIR it also writes intermediate tensors (the text
encoder's projection, the durations, the flow output) as .npy files for debugging.
"""
import argparse
import os
import sys

import numpy as np
import onnxruntime

# (name, sentence index in phoneme_ids.tsv row, row index, length_scale)
CASES = [
    ("hello", 0, 0, 1.0),
    ("fox_slow", 1, 0, 1.3),
]

DEBUG_OUTPUTS = ["/enc_p/proj/Conv_output_0", "/Ceil_output_0", "/Mul_7_output_0", "/dp/proj/Conv_output_0"]


def read_ids(data_dir):
    rows = []
    with open(os.path.join(data_dir, "phoneme_ids.tsv"), encoding="utf-8") as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            cols = line.rstrip("\n").split("\t")
            rows.append([[int(x) for x in s.split()] for s in cols[2].split(" | ")])
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("onnx")
    ap.add_argument("data_dir")
    ap.add_argument("--debug", help="also dump intermediate tensors here")
    args = ap.parse_args()

    opts = onnxruntime.SessionOptions()
    opts.intra_op_num_threads = 1
    model_path = args.onnx
    if args.debug:
        import onnx

        m = onnx.load(args.onnx)
        for name in DEBUG_OUTPUTS:
            m.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
        os.makedirs(args.debug, exist_ok=True)
        model_path = os.path.join(args.debug, "debug.onnx")
        onnx.save(m, model_path)
    sess = onnxruntime.InferenceSession(model_path, sess_options=opts, providers=["CPUExecutionProvider"])
    rows = read_ids(args.data_dir)
    for name, row, sentence, length_scale in CASES:
        ids = rows[row][sentence]
        feeds = {
            "input": np.array([ids], dtype=np.int64),
            "input_lengths": np.array([len(ids)], dtype=np.int64),
            "scales": np.array([0.0, length_scale, 0.0], dtype=np.float32),
        }
        outs = sess.run(None, feeds)
        audio = outs[0].reshape(-1).astype("<f4")
        with open(os.path.join(args.data_dir, f"vits_{name}.ids"), "w") as f:
            f.write(f"{length_scale} " + " ".join(str(i) for i in ids) + "\n")
        audio.tofile(os.path.join(args.data_dir, f"vits_{name}.f32"))
        print(f"{name}: {len(ids)} ids, length_scale {length_scale}, {audio.size} samples", file=sys.stderr)
        if args.debug:
            for tname, t in zip(DEBUG_OUTPUTS, outs[1:]):
                np.save(os.path.join(args.debug, f"{name}_{tname.strip('/').replace('/', '_')}.npy"), t)


if __name__ == "__main__":
    main()
