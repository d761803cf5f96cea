#!/usr/bin/env python3
"""Dumps llama.cpp's intermediate tensors (ggml's eval callback) for one prompt and forced
tokens, to compare them bit for bit with sotad's (engines/examples/llm_probe.rs).

    /tmp/venv-llm/bin/python scripts/reference/llm_dump_llama.py MODEL.gguf OUT.npz \
        '[prompt ids]' ['[forced ids]'] ['[calls to dump]']

Call 0 evaluates the prompt, call k the k-th forced token; only the listed calls are kept
(default: the prompt). Same settings as llm_reference.py (2 threads, n_batch 512, flash
attention off, f16 KV cache). Keys are "call/tensor name" (repeated names get "#k"), values
float32 arrays in ggml's [ne3][ne2][ne1][ne0] order (f16 tensors converted).
"""
import ctypes, json, sys
import numpy as np
import llama_cpp
from llama_cpp import Llama
import llama_cpp.llama_cpp as L

class T(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("buffer", ctypes.c_void_p), ("ne", ctypes.c_int64*4),
                ("nb", ctypes.c_size_t*4), ("op", ctypes.c_int), ("op_params", ctypes.c_int32*16),
                ("flags", ctypes.c_int32), ("src", ctypes.c_void_p*10), ("view_src", ctypes.c_void_p),
                ("view_offs", ctypes.c_size_t), ("data", ctypes.c_void_p), ("name", ctypes.c_char*64)]
store = {}
state = {"call": 0, "want": set()}
def cb(t, ask, ud):
    tt = ctypes.cast(t, ctypes.POINTER(T)).contents
    if ask:
        return True
    if state["call"] not in state["want"]:
        return True
    name = tt.name.decode()
    ne = list(tt.ne); nb = list(tt.nb)
    if tt.type == 0:   # f32
        nbytes = (ne[3]-1)*nb[3]+(ne[2]-1)*nb[2]+(ne[1]-1)*nb[1]+(ne[0]-1)*nb[0]+4
        raw = np.ctypeslib.as_array(ctypes.cast(tt.data, ctypes.POINTER(ctypes.c_uint8)), shape=(nbytes,))
        a = np.lib.stride_tricks.as_strided(np.frombuffer(raw, dtype=np.uint8), shape=(ne[3],ne[2],ne[1],ne[0],4), strides=(nb[3],nb[2],nb[1],nb[0],1)).copy().view(np.float32)[...,0]
        key = f"{state['call']}/{name}"
        k2 = key; i = 1
        while k2 in store:
            k2 = f"{key}#{i}"; i += 1
        store[k2] = a.copy()
    elif tt.type == 1:  # f16
        nbytes = (ne[3]-1)*nb[3]+(ne[2]-1)*nb[2]+(ne[1]-1)*nb[1]+(ne[0]-1)*nb[0]+2
        raw = np.ctypeslib.as_array(ctypes.cast(tt.data, ctypes.POINTER(ctypes.c_uint8)), shape=(nbytes,))
        a = np.lib.stride_tricks.as_strided(np.frombuffer(raw, dtype=np.uint8), shape=(ne[3],ne[2],ne[1],ne[0],2), strides=(nb[3],nb[2],nb[1],nb[0],1)).copy().view(np.float16)[...,0]
        store[f"{state['call']}/{name}"] = a.astype(np.float32)
    return True
cbf = L.ggml_backend_sched_eval_callback(cb)
orig = L.llama_context_default_params
def patched():
    p = orig(); p.cb_eval = cbf; return p
L.llama_context_default_params = patched

model, out, prompt = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
forced = json.loads(sys.argv[4]) if len(sys.argv) > 4 else []
state["want"] = set(json.loads(sys.argv[5])) if len(sys.argv) > 5 else {0}
llm = Llama(model, n_ctx=1024, n_batch=512, n_threads=2, flash_attn=False, verbose=False, seed=0)
llm.reset()
llm.eval(prompt); state["call"] += 1
for t in forced:
    llm.eval([t]); state["call"] += 1
np.savez(out, **store)
print(len(store), "tensors;", sorted(set(k.split('/')[1] for k in store))[:80])
