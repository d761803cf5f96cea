#!/usr/bin/env python3
"""The llama.cpp side of benches/llm.rs: same GGUF, same threads, same token ids.

Usage: llm_bench_peer.py MODEL.gguf THREADS PROMPT_IDS_FILE DECODE_TOKENS
A server, so that benches/llm.rs can alternate the two sides' runs on a machine whose speed
drifts: after loading, one JSON line with load_ms and the RSS after load; then one run, and
one JSON line with its prefill_tok_s, ttft_ms and decode_tok_s, for every line read on
standard input; at the end of input a last line with the RSS after generating.
Run with a python that has llama-cpp-python (see llm_reference.py).
"""
import json
import sys
import time

import numpy as np
import llama_cpp
from llama_cpp import Llama


def rss():
    out = {}
    for line in open("/proc/self/status"):
        k, _, v = line.partition(":")
        if k in ("RssAnon", "RssFile"):
            out[k] = int(v.split()[0])
    return out


def main():
    path, threads, ids_file, n_dec = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    ids = [int(x) for x in open(ids_file).read().split()]
    t = time.perf_counter()
    llm = Llama(path, n_ctx=1024, n_batch=512, n_threads=threads, n_threads_batch=threads,
                flash_attn=False, verbose=False, seed=0)
    load_ms = (time.perf_counter() - t) * 1e3
    after_load = rss()
    n_vocab = llm.n_vocab()

    def last_logits():
        return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1), shape=(n_vocab,))

    def one_run():
        llm.reset()
        t = time.perf_counter()
        llm.eval(ids)
        int(np.argmax(last_logits()))
        dt = time.perf_counter() - t
        llm.reset()
        llm.eval(ids[:16])
        tok = int(np.argmax(last_logits()))
        t = time.perf_counter()
        for _ in range(n_dec):
            llm.eval([tok])
            tok = int(np.argmax(last_logits()))
        return len(ids) / dt, dt * 1e3, n_dec / (time.perf_counter() - t)

    rss_load = {"rss_anon_load_kib": after_load["RssAnon"], "rss_file_load_kib": after_load["RssFile"]}
    print(json.dumps({"load_ms": load_ms, **rss_load}), flush=True)
    for _ in sys.stdin:
        p, f, d = one_run()
        print(json.dumps({"prefill_tok_s": p, "ttft_ms": f, "decode_tok_s": d}), flush=True)
    after_gen = rss()
    print(json.dumps({"rss_anon_gen_kib": after_gen["RssAnon"],
                      "rss_file_gen_kib": after_gen["RssFile"]}), flush=True)


if __name__ == "__main__":
    main()
