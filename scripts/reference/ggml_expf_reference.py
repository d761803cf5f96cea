#!/usr/bin/env python3
"""Reference values of ggml's SIMD exp and SiLU (ggml_v_expf, ggml_v_silu) for the LLM unit test.

Calls the exported ggml_vec_soft_max_f32 (with max = 0, so y = ggml_v_expf(x)) and
ggml_vec_silu_f32 of the llama-cpp-python build (GGML_NATIVE on this x86_64 AVX2 machine;
the NEON version performs the same operations). Writes engines/tests/data/llm/ggml_expf.json:
inputs and outputs as f32 bit patterns.

    PYTHONPATH=<dir with llama_cpp> python scripts/reference/ggml_expf_reference.py LIBGGML_CPU.so
"""
import ctypes
import json
import sys

import numpy as np

lib = ctypes.CDLL(sys.argv[1])
lib.ggml_vec_soft_max_f32.restype = ctypes.c_double
P = ctypes.POINTER(ctypes.c_float)
rng = np.random.default_rng(7)
x = np.concatenate([
    rng.uniform(-110.0, 90.0, 256),
    rng.standard_normal(512) * 4.0,
    rng.uniform(-1e-3, 1e-3, 64),
    np.array([0.0, -0.0, 88.0, 88.5, -87.0, -100.0, -104.0, -150.0, -300.0, 150.0,
              np.inf, -np.inf, 1.0, -1.0, 0.5, -0.5]),
]).astype(np.float32)
assert len(x) % 8 == 0
e = np.zeros_like(x)
lib.ggml_vec_soft_max_f32(ctypes.c_int(len(x)), e.ctypes.data_as(P), x.ctypes.data_as(P),
                          ctypes.c_float(0.0))
s = np.zeros_like(x)
lib.ggml_vec_silu_f32(ctypes.c_int(len(x)), s.ctypes.data_as(P), x.ctypes.data_as(P))
u32 = lambda a: [int(v) for v in a.view(np.uint32)]
json.dump({"generator": "scripts/reference/ggml_expf_reference.py", "x": u32(x),
           "exp": u32(e), "silu": u32(s)},
          open("engines/tests/data/llm/ggml_expf.json", "w"))
