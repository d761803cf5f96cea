#!/usr/bin/env python3
"""Reference token ids for the LLM engine tests, from llama.cpp (llama-cpp-python).

For each real model: the tokenization of a set of strings (llama.cpp's tokenizer, BOS added
when the model wants it, special tokens parsed), and greedy decoding of three prompts (one
rendered with the chat template) as token ids. Written to engines/tests/data/llm/<model>.json.

Setup (compiles llama.cpp, ~10 min on 2 idle cores):
    python3 -m venv /tmp/venv-llm
    CMAKE_ARGS="-DGGML_NATIVE=ON" /tmp/venv-llm/bin/pip install llama-cpp-python numpy
Run:
    /tmp/venv-llm/bin/python scripts/reference/llm_reference.py [models_dir] [out_dir]

llama.cpp runs with flash attention off and its default f16 KV cache, on 2 threads.
Gemma 3's GGUF has no chat template; the prompt uses the same fallback turns as the engine.
"""
import json
import os
import sys

import jinja2
import numpy as np
import llama_cpp
from llama_cpp import Llama

MODELS = {
    "smollm2-135m-instruct-q4_1": "smollm2-135m-instruct-q4_1.gguf",
    "qwen2.5-coder-0.5b-instruct-q4_k_m": "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    "gemma-3-270m-q4_k_m": "gemma-3-270m-q4_k_m.gguf",
}
N_GEN = 40
RAW_PROMPTS = [
    "The capital of France is",
    "In 2024, the robot's 3 wheels   turned 12.5 times!\n\nThen it",
]
CHAT = [
    {"role": "system", "content": "You are a friendly robot. Answer briefly."},
    {"role": "user", "content": "What should I pack for a day at the beach?"},
]
TOKENIZE = [
    "Hello world",
    "  multiple   spaces\n\n\ttabs and\r\nwindows lines",
    "numbers 1234567 and 3.14159, 2^10=1024",
    "unicode: café naïve Zürich 日本語 한국어 🤖👍",
    "it's I'll we'd THEY'RE",
    "def f(x):\n    return x * 2  # comment\n",
    "<|im_start|>user\nhi<|im_end|>\n<start_of_turn>model\n",
]


def gemma_fallback(messages):
    # Must match GEMMA in engines/src/llm/chat.rs.
    out, sys_text = "", ""
    for m in messages:
        if m["role"] == "system":
            sys_text += m["content"] + "\n\n"
        else:
            role = "model" if m["role"] == "assistant" else m["role"]
            out += f"<start_of_turn>{role}\n{sys_text}{m['content'].strip()}<end_of_turn>\n"
            sys_text = ""
    return out + "<start_of_turn>model\n"


def render_chat(llm, messages):
    tmpl = llm.metadata.get("tokenizer.chat_template")
    if tmpl is None:
        return gemma_fallback(messages)
    env = jinja2.Environment(loader=jinja2.BaseLoader())
    return env.from_string(tmpl).render(messages=messages, add_generation_prompt=True)


def greedy(llm, ids):
    llm.reset()
    llm.eval(ids)
    out = []
    for _ in range(N_GEN):
        # Logits of the last evaluated token (llama-cpp-python keeps no scores without
        # logits_all).
        ptr = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
        logits = np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),))
        t = int(np.argmax(logits))
        out.append(t)
        if llama_cpp.llama_vocab_is_eog(llama_cpp.llama_model_get_vocab(llm.model), t):
            break
        llm.eval([t])
    return out


def main():
    models_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.expanduser("~/.cache/sotad/models")
    out_dir = sys.argv[2] if len(sys.argv) > 2 else "engines/tests/data/llm"
    os.makedirs(out_dir, exist_ok=True)
    for name, file in MODELS.items():
        llm = Llama(os.path.join(models_dir, file), n_ctx=1024, n_batch=512, n_threads=2,
                    flash_attn=False, verbose=False, seed=0)
        tok = lambda s: llm.tokenize(s.encode(), add_bos=True, special=True)
        tokenize = [{"text": s, "ids": tok(s)} for s in TOKENIZE]
        tokenize_plain = [{"text": s, "ids": llm.tokenize(s.encode(), add_bos=False, special=False)}
                          for s in TOKENIZE]
        chat_text = render_chat(llm, CHAT)
        prompts = [{"kind": "raw", "text": p} for p in RAW_PROMPTS]
        prompts.append({"kind": "chat", "messages": CHAT, "text": chat_text})
        for p in prompts:
            p["prompt_ids"] = tok(p["text"])
            p["greedy_ids"] = greedy(llm, p["prompt_ids"])
            p["greedy_text"] = llm.detokenize(p["greedy_ids"]).decode("utf-8", "replace")
            print(name, p["kind"], repr(p["greedy_text"][:80]))
        doc = {
            "generator": "scripts/reference/llm_reference.py",
            "llama_cpp_python": llama_cpp.__version__,
            "model": file,
            "n_gen": N_GEN,
            "tokenize": tokenize,
            "tokenize_plain": tokenize_plain,
            "prompts": prompts,
        }
        with open(os.path.join(out_dir, name + ".json"), "w") as f:
            json.dump(doc, f, indent=1, ensure_ascii=False)
        del llm


if __name__ == "__main__":
    main()
