#!/usr/bin/env python3
"""Test-data generator: a faster-whisper (CTranslate2) Whisper directory as a Hugging Face
(transformers) directory: model.safetensors, config.json, tokenizer.json.

No Hugging Face Whisper weights can be downloaded where sotad is built and tested (no model
hub), so this writes one from the CTranslate2 tiny.en that scripts/install-models.sh installs.
It is the independent cross-check of sotad's safetensors reader: it parses model.bin with
numpy (not with sotad's code), writes the file with the `safetensors` package, and uses
transformers' names and layout:

- self-attention q/k/v split out of CTranslate2's fused `linear_0` (rows 0..S, S..2S, 2S..3S);
  `k_proj` has no bias (the fused bias has zeros there);
- cross-attention `linear_1` split into `k_proj` (no bias) and `v_proj`;
- layer norms `gamma`/`beta` -> `weight`/`bias`;
- `proj_out.weight` is left out (tied to `model.decoder.embed_tokens.weight`, as
  transformers saves it);
- config.json has WhisperConfig's fields; suppress lists come from CTranslate2's config.json.

The Rust test engines/tests/stt_formats.rs writes the same directory itself (so the test needs
no Python); this script was run once by hand to check that the two agree:

    python3 -m venv /tmp/venv-sttfmt && /tmp/venv-sttfmt/bin/pip install numpy safetensors
    /tmp/venv-sttfmt/bin/python scripts/reference/whisper_ct2_to_hf.py \
        ~/.cache/sotad/models/whisper-tiny.en-ct2 /tmp/whisper-tiny.en-hf
    sotad transcribe ... (stt.model = /tmp/whisper-tiny.en-hf)

Usage: whisper_ct2_to_hf.py CT2_DIR OUT_DIR
"""

import json
import shutil
import struct
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}


def read_ct2(path):
    """CTranslate2 model.bin (binary version 4-6) -> {name: ndarray}, aliases resolved."""
    data = Path(path).read_bytes()
    pos = 0

    def take(fmt):
        nonlocal pos
        vals = struct.unpack_from("<" + fmt, data, pos)
        pos += struct.calcsize("<" + fmt)
        return vals

    def string():
        nonlocal pos
        (n,) = take("H")
        s = data[pos : pos + n - 1].decode()
        pos += n
        return s

    (version,) = take("I")
    assert 4 <= version <= 6, version
    spec = string()
    (revision,) = take("I")
    assert (spec, revision) == ("WhisperSpec", 3), (spec, revision)
    (count,) = take("I")
    out = {}
    for _ in range(count):
        name = string()
        (rank,) = take("B")
        dims = take("I" * rank)
        (dtype,) = take("B")
        (nbytes,) = take("I")
        if dtype == 5:  # bfloat16: widen to float32
            raw = np.frombuffer(data, np.uint16, nbytes // 2, pos).astype(np.uint32) << 16
            arr = raw.view(np.float32)
        else:
            arr = np.frombuffer(data, DTYPES[dtype], nbytes // np.dtype(DTYPES[dtype]).itemsize, pos)
        out[name] = arr.reshape(dims).copy()
        pos += nbytes
    (aliases,) = take("I")
    for _ in range(aliases):
        alias, target = string(), string()
        out[alias] = out[target]
    return out


def convert(src, dst):
    v = read_ct2(Path(src) / "model.bin")
    ct2_config = json.loads((Path(src) / "config.json").read_text())
    t = {}

    def lin(hf, ct2, bias=True):
        t[f"{hf}.weight"] = v[f"{ct2}/weight"]
        if bias:
            t[f"{hf}.bias"] = v[f"{ct2}/bias"]

    def norm(hf, ct2):
        t[f"{hf}.weight"] = v[f"{ct2}/gamma"]
        t[f"{hf}.bias"] = v[f"{ct2}/beta"]

    def fused_qkv(hf, ct2):
        w, b = v[f"{ct2}/weight"], v[f"{ct2}/bias"]
        s = w.shape[0] // 3
        assert not b[s : 2 * s].any(), "key bias must be zero"
        t[f"{hf}.q_proj.weight"], t[f"{hf}.q_proj.bias"] = w[:s], b[:s]
        t[f"{hf}.k_proj.weight"] = w[s : 2 * s]
        t[f"{hf}.v_proj.weight"], t[f"{hf}.v_proj.bias"] = w[2 * s :], b[2 * s :]

    def count(side):
        parts = (k.split("/")[1][6:] for k in v if k.startswith(f"{side}/layer_"))
        return 1 + max(int(p) for p in parts if p.isdigit())

    n_enc, n_dec = count("encoder"), count("decoder")
    for i in ("1", "2"):
        lin(f"model.encoder.conv{i}", f"encoder/conv{i}")
    t["model.encoder.embed_positions.weight"] = v["encoder/position_encodings/encodings"]
    for i in range(n_enc):
        h, c = f"model.encoder.layers.{i}", f"encoder/layer_{i}"
        norm(f"{h}.self_attn_layer_norm", f"{c}/self_attention/layer_norm")
        fused_qkv(f"{h}.self_attn", f"{c}/self_attention/linear_0")
        lin(f"{h}.self_attn.out_proj", f"{c}/self_attention/linear_1")
        norm(f"{h}.final_layer_norm", f"{c}/ffn/layer_norm")
        lin(f"{h}.fc1", f"{c}/ffn/linear_0")
        lin(f"{h}.fc2", f"{c}/ffn/linear_1")
    norm("model.encoder.layer_norm", "encoder/layer_norm")
    t["model.decoder.embed_tokens.weight"] = v["decoder/embeddings/weight"]
    t["model.decoder.embed_positions.weight"] = v["decoder/position_encodings/encodings"]
    for i in range(n_dec):
        h, c = f"model.decoder.layers.{i}", f"decoder/layer_{i}"
        norm(f"{h}.self_attn_layer_norm", f"{c}/self_attention/layer_norm")
        fused_qkv(f"{h}.self_attn", f"{c}/self_attention/linear_0")
        lin(f"{h}.self_attn.out_proj", f"{c}/self_attention/linear_1")
        norm(f"{h}.encoder_attn_layer_norm", f"{c}/attention/layer_norm")
        lin(f"{h}.encoder_attn.q_proj", f"{c}/attention/linear_0")
        w, b = v[f"{c}/attention/linear_1/weight"], v[f"{c}/attention/linear_1/bias"]
        d = w.shape[0] // 2
        assert not b[:d].any(), "cross-attention key bias must be zero"
        t[f"{h}.encoder_attn.k_proj.weight"] = w[:d]
        t[f"{h}.encoder_attn.v_proj.weight"], t[f"{h}.encoder_attn.v_proj.bias"] = w[d:], b[d:]
        lin(f"{h}.encoder_attn.out_proj", f"{c}/attention/linear_2")
        norm(f"{h}.final_layer_norm", f"{c}/ffn/layer_norm")
        lin(f"{h}.fc1", f"{c}/ffn/linear_0")
        lin(f"{h}.fc2", f"{c}/ffn/linear_1")
    norm("model.decoder.layer_norm", "decoder/layer_norm")

    state = v["encoder/conv1/weight"].shape[0]
    vocab = v["decoder/embeddings/weight"].shape[0]
    config = {
        "_name_or_path": "converted from CTranslate2 by whisper_ct2_to_hf.py",
        "activation_dropout": 0.0,
        "activation_function": "gelu",
        "architectures": ["WhisperForConditionalGeneration"],
        "attention_dropout": 0.0,
        "begin_suppress_tokens": ct2_config.get("suppress_ids_begin", []),
        "bos_token_id": 50257,
        "d_model": int(state),
        "decoder_attention_heads": int(v["decoder/num_heads"]),
        "decoder_ffn_dim": int(v["decoder/layer_0/ffn/linear_0/weight"].shape[0]),
        "decoder_layerdrop": 0.0,
        "decoder_layers": n_dec,
        "decoder_start_token_id": 50257,
        "dropout": 0.0,
        "encoder_attention_heads": int(v["encoder/num_heads"]),
        "encoder_ffn_dim": int(v["encoder/layer_0/ffn/linear_0/weight"].shape[0]),
        "encoder_layerdrop": 0.0,
        "encoder_layers": n_enc,
        "eos_token_id": 50256,
        "init_std": 0.02,
        "is_encoder_decoder": True,
        "max_length": 448,
        "max_source_positions": int(v["encoder/position_encodings/encodings"].shape[0]),
        "max_target_positions": int(v["decoder/position_encodings/encodings"].shape[0]),
        "model_type": "whisper",
        "num_hidden_layers": n_enc,
        "num_mel_bins": int(v["encoder/conv1/weight"].shape[1]),
        "pad_token_id": 50256,
        "scale_embedding": False,
        "suppress_tokens": ct2_config.get("suppress_ids", []),
        "torch_dtype": str(v["encoder/conv1/weight"].dtype),
        "use_cache": True,
        "vocab_size": int(vocab),
    }
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(a) for k, a in t.items()}, dst / "model.safetensors",
              metadata={"format": "pt"})
    (dst / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    shutil.copy(Path(src) / "tokenizer.json", dst / "tokenizer.json")
    print(f"wrote {len(t)} tensors to {dst}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    convert(sys.argv[1], sys.argv[2])
