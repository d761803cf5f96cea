#!/usr/bin/env python3
"""Reference logits for the tiny random-weight Qwen3 and Llama 3.2 GGUF fixtures.

An independent forward pass in numpy (float64, activations not quantized), reading the files
with the `gguf` package that ships with llama.cpp. The GGUFs are built by the Rust test
`tiny_fixture_files_are_what_the_builder_writes` (engines/tests/llm.rs;
SOTAD_WRITE_TINY_LLM=1 rewrites them). Writes engines/tests/data/llm/<name>.logits.json.

    python3 -m venv /tmp/venv-gguf && /tmp/venv-gguf/bin/pip install gguf numpy
    /tmp/venv-gguf/bin/python scripts/reference/llm_tiny_reference.py

Layout conventions (GGUF's, as llama.cpp reads it): matrices are [rows=out][cols=in];
`llama` rotates adjacent pairs (2i, 2i+1), `qwen3` rotates (i, i + d/2). Llama 3 rope
scaling is computed here from the `rope.scaling.*` hyper-parameters (Hugging Face's
formula), not from the file's `rope_freqs.weight`.
"""
import json
import os
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

TOKENS = [258, 40, 100, 33, 270, 71, 5, 200, 99, 140, 257, 60, 61, 62, 120, 180,
          33, 34, 35, 36, 260, 101, 102, 103]


def field(r, key):
    f = r.fields[key]
    v = f.contents()
    return v


def tensors(r):
    out = {}
    for t in r.tensors:
        a = dequantize(t.data, t.tensor_type).astype(np.float64)
        shape = [int(x) for x in reversed(t.shape)]  # rows first
        out[t.name] = a.reshape(shape)
    return out


def rms(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rope(x, pos, freqs, neox):
    # x: [T, H, d]; freqs: [d/2]
    ang = pos[:, None] * freqs[None, :]  # [T, d/2]
    c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    x = x.copy()
    half = x.shape[-1] // 2
    if neox:
        a, b = x[..., :half].copy(), x[..., half:].copy()
        x[..., :half] = a * c - b * s
        x[..., half:] = a * s + b * c
    else:
        a, b = x[..., 0::2].copy(), x[..., 1::2].copy()
        x[..., 0::2] = a * c - b * s
        x[..., 1::2] = a * s + b * c
    return x


def forward(path):
    r = GGUFReader(path)
    arch = field(r, "general.architecture")
    g = lambda k: field(r, f"{arch}.{k}")
    n_layer, n_head, n_kv = g("block_count"), g("attention.head_count"), g("attention.head_count_kv")
    hd, eps, base = g("attention.key_length"), g("attention.layer_norm_rms_epsilon"), g("rope.freq_base")
    W = tensors(r)
    freqs = base ** (-np.arange(0, hd, 2, dtype=np.float64) / hd)
    if f"{arch}.rope.scaling.type" in r.fields and g("rope.scaling.type") == "llama3":
        factor, low, high = g("rope.scaling.factor"), g("rope.scaling.low_freq_factor"), g("rope.scaling.high_freq_factor")
        orig = g("rope.scaling.original_context_length")
        wavelen = 2 * np.pi / freqs
        smooth = (orig / wavelen - low) / (high - low)
        scaled = np.where(wavelen < orig / high, freqs,
                          np.where(wavelen > orig / low, freqs / factor,
                                   (1 - smooth) * freqs / factor + smooth * freqs))
        freqs = scaled
    neox = arch != "llama"
    T = len(TOKENS)
    pos = np.arange(T, dtype=np.float64)
    x = W["token_embd.weight"][TOKENS]
    mask = np.triu(np.full((T, T), -np.inf), 1)
    for l in range(n_layer):
        p = lambda n: W[f"blk.{l}.{n}"]
        h = rms(x, p("attn_norm.weight"), eps)
        q = (h @ p("attn_q.weight").T).reshape(T, n_head, hd)
        k = (h @ p("attn_k.weight").T).reshape(T, n_kv, hd)
        v = (h @ p("attn_v.weight").T).reshape(T, n_kv, hd)
        if f"blk.{l}.attn_q_norm.weight" in W:
            q = rms(q, p("attn_q_norm.weight"), eps)
            k = rms(k, p("attn_k_norm.weight"), eps)
        q, k = rope(q, pos, freqs, neox), rope(k, pos, freqs, neox)
        group = n_head // n_kv
        out = np.zeros((T, n_head, hd))
        for hh in range(n_head):
            kk, vv = k[:, hh // group], v[:, hh // group]
            s = q[:, hh] @ kk.T / np.sqrt(hd) + mask
            s = np.exp(s - s.max(axis=1, keepdims=True))
            s /= s.sum(axis=1, keepdims=True)
            out[:, hh] = s @ vv
        x = x + out.reshape(T, -1) @ p("attn_output.weight").T
        h = rms(x, p("ffn_norm.weight"), eps)
        gt, up = h @ p("ffn_gate.weight").T, h @ p("ffn_up.weight").T
        x = x + (gt / (1 + np.exp(-gt)) * up) @ p("ffn_down.weight").T
    h = rms(x, W["output_norm.weight"], eps)
    out_w = W.get("output.weight", W["token_embd.weight"])
    return h @ out_w.T


def main():
    data = sys.argv[1] if len(sys.argv) > 1 else "engines/tests/data/llm"
    for name in ["tiny-qwen3", "tiny-llama32"]:
        logits = forward(os.path.join(data, name + ".gguf"))
        doc = {"generator": "scripts/reference/llm_tiny_reference.py", "tokens": TOKENS,
               "logits": [[round(float(v), 6) for v in row] for row in logits]}
        with open(os.path.join(data, name + ".logits.json"), "w") as f:
            json.dump(doc, f)
        print(name, logits.shape, float(np.abs(logits).max()))


if __name__ == "__main__":
    main()
