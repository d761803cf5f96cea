#!/usr/bin/env python3
"""Compares llm_probe dumps (sotad) with llm_dump_llama.py dumps (llama.cpp) bit for bit and
prints the first intermediate that differs (or all with a fourth argument).

    python3 scripts/reference/llm_compare_dumps.py LLAMA.npz SOTAD_DIR CALL [all]
"""
import re
import sys

import numpy as np
z = np.load(sys.argv[1]); d = sys.argv[2]; call = int(sys.argv[3]); verbose = len(sys.argv) > 4
names = {}
for k in z.files:
    c, n = k.split('/', 1)
    if int(c) != call: continue
    names.setdefault(n, z[k])
def ggml(name, layer):
    m = {"attn_norm": "attn_norm", "Qcur": "Qcur", "Kcur": "Kcur", "Vcur": "Vcur", "kqv_out": "kqv_out",
         "attn_post_norm": "attn_post_norm", "sa_out": "sa_out", "ffn_norm": "ffn_norm", "ffn_gate": "ffn_gate",
         "ffn_up": "ffn_up", "ffn_out": "ffn_out", "ffn_post_norm": "ffn_post_norm", "l_out": "l_out"}
    if name in ("inp_scaled",):
        for c in ("inp_scaled", "inp_embd"):
            if c in names: return names[c]
        return None
    if name in ("result_norm", "result_output"): return names.get(name)
    if name == "ffn_act":
        for c in ("ffn_geglu", "ffn_swiglu", "ffn_gelu"):
            if f"{c}-{layer}" in names: return names[f"{c}-{layer}"]
        return None
    if name == "sa_out" and f"sa_out-{layer}" not in names:
        return names.get(f"ffn_inp-{layer}")
    if name in ("Qrope", "Krope"):
        b = name[0] + "cur"
        cands = [k for k in names if re.fullmatch(rf"{b}-{layer}(#\d+)?", k)]
        cands.sort(key=lambda k: int(k.split('#')[1]) if '#' in k else 0)
        return names[cands[-1]] if cands else None
    if name == "attn_out":
        return names.get(f"attn_out-{layer}")
    return names.get(f"{m.get(name, name)}-{layer}")
idx = [l.split() for l in open(f"{d}/{call}.idx")]
raw = np.fromfile(f"{d}/{call}.bin", dtype=np.float32)
first = None
for name, layer, cnt, off in idx:
    layer, cnt, off = int(layer), int(cnt), int(off)
    ours = raw[off:off + cnt]
    ref = ggml(name, layer)
    if ref is None:
        if verbose: print(f"{name}-{layer}: no ggml tensor")
        continue
    ref = ref.reshape(-1)
    if ref.size != ours.size:
        print(f"{name}-{layer}: size {ours.size} vs {ref.size}"); continue
    nd = int(np.sum(ours.view(np.uint32) != ref.view(np.uint32)))
    if nd or verbose:
        md = float(np.max(np.abs(ours - ref)))
        print(f"{name}-{layer}: {nd}/{cnt} differ, max abs {md:.3g}")
    if nd and first is None:
        first = (name, layer)
        if not verbose: break
print("first difference:", first)
