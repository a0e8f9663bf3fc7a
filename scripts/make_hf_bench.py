#!/usr/bin/env python3
"""Writes a Pythia-shaped GPT-NeoX with random weights and a random-token probe,
for benchmarking lintrace's Hugging Face reader against scripts/hf_peer.py.
Nothing is downloaded: the model is built from a config.

    python3 scripts/make_hf_bench.py OUT_DIR --size 160m|1b|tiny

Writes
  OUT_DIR/step0/config.json, OUT_DIR/step0/model.safetensors
      GPTNeoXForCausalLM.save_pretrained (one safetensors file, float32;
      transformers 5 writes the head as `embed_out.weight`, as Pythia's files
      name it), weights from transformers' own initialisation
      (initializer_range 0.02; LayerNorms 1 and 0) after torch.manual_seed(0).
      Sizes (all: vocab 50304, 2048 positions, rotary_pct 0.25, rotary base
      10000, parallel residual, exact GELU, untied head, LayerNorm eps 1e-5,
      as Pythia):
        160m: 12 layers, d 768, MLP 3072, 12 heads   (~162M parameters, 0.65 GB)
        1b:   16 layers, d 2048, MLP 8192, 8 heads   (~1.01B parameters, 4.0 GB)
        tiny: 2 layers, d 64, MLP 256, 4 heads       (~6.5M parameters, 26 MB)
      --pythia-config writes config.json as the EleutherAI hub files have it
      (rotary_pct, rotary_emb_base, torch_dtype) instead of transformers 5's
      form (rope_parameters.partial_rotary_factor / rope_theta, dtype).
  OUT_DIR/probe.safetensors
      `inputs` int64 [n, T] (default 8 x 512) token ids drawn uniformly below
      50277 (Pythia's tokenizer size) with numpy default_rng(1234), and
      `labels` int64 [n, T]: the next token at every position (a row of
      T + 1 ids is drawn per window; the last label is the id that follows).

      --torch-only writes the same layout with torch alone (no transformers,
      no safetensors package), for a GPU machine that has only torch
      (scripts/gpu/pending-runs.sh): weights drawn N(0, 0.02) (LayerNorms 1
      and 0, biases 0) under torch.manual_seed(0), saved with torch.save as
      step0/pytorch_model.bin under GPT-NeoX's names, and config.json in the
      hub form.

Then:  python3 scripts/hf_peer.py OUT_DIR --probe OUT_DIR/probe.safetensors --threads 2
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import torch

SIZES = {
    "160m": dict(num_hidden_layers=12, hidden_size=768, intermediate_size=3072, num_attention_heads=12),
    "1b": dict(num_hidden_layers=16, hidden_size=2048, intermediate_size=8192, num_attention_heads=8),
    "tiny": dict(num_hidden_layers=2, hidden_size=64, intermediate_size=256, num_attention_heads=4),
}
VOCAB = 50304
TOKENIZER_VOCAB = 50277


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir", metavar="OUT_DIR")
    ap.add_argument("--size", choices=sorted(SIZES), required=True)
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--pythia-config", action="store_true",
                    help="write config.json in the EleutherAI hub form (rotary_pct, rotary_emb_base, torch_dtype)")
    ap.add_argument("--torch-only", action="store_true",
                    help="torch alone: pytorch_model.bin with GPT-NeoX's names, no transformers or safetensors")
    args = ap.parse_args(argv)
    if args.torch_only:
        return torch_only(args)

    import transformers
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    transformers.logging.set_verbosity_error()
    out = Path(args.out_dir)
    rev = out / "step0"
    rev.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    shape = SIZES[args.size]
    cfg = GPTNeoXConfig(vocab_size=VOCAB, max_position_embeddings=2048, rotary_pct=0.25, rotary_emb_base=10000,
                        use_parallel_residual=True, hidden_act="gelu", tie_word_embeddings=False,
                        layer_norm_eps=1e-5, bos_token_id=0, eos_token_id=0,
                        architectures=["GPTNeoXForCausalLM"], **shape)
    t0 = time.perf_counter()
    model = GPTNeoXForCausalLM(cfg).eval()
    n_params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(rev)
    if args.pythia_config:
        c = cfg
        hub = {
            "architectures": ["GPTNeoXForCausalLM"], "bos_token_id": 0, "eos_token_id": 0,
            "hidden_act": "gelu", "hidden_size": c.hidden_size, "initializer_range": 0.02,
            "intermediate_size": c.intermediate_size, "layer_norm_eps": 1e-05, "max_position_embeddings": 2048,
            "model_type": "gpt_neox", "num_attention_heads": c.num_attention_heads,
            "num_hidden_layers": c.num_hidden_layers, "rotary_emb_base": 10000, "rotary_pct": 0.25,
            "tie_word_embeddings": False, "torch_dtype": "float32", "transformers_version": "4.24.0",
            "use_cache": True, "use_parallel_residual": True, "vocab_size": VOCAB,
        }
        (rev / "config.json").write_text(json.dumps(hub, indent=2) + "\n")
    t_model = time.perf_counter() - t0

    write_probe(out, args)
    files = sorted(p.name for p in rev.iterdir())
    size = sum(p.stat().st_size for p in rev.iterdir())
    print(f"wrote {rev} ({', '.join(files)}; {size / 1e6:.1f} MB, {n_params:,} parameters, {t_model:.1f} s) "
          f"and {out / 'probe.safetensors'} (inputs/labels int64 [{args.windows}, {args.context}])")


def hub_config(shape):
    return {
        "architectures": ["GPTNeoXForCausalLM"], "bos_token_id": 0, "eos_token_id": 0,
        "hidden_act": "gelu", "hidden_size": shape["hidden_size"], "initializer_range": 0.02,
        "intermediate_size": shape["intermediate_size"], "layer_norm_eps": 1e-05, "max_position_embeddings": 2048,
        "model_type": "gpt_neox", "num_attention_heads": shape["num_attention_heads"],
        "num_hidden_layers": shape["num_hidden_layers"], "rotary_emb_base": 10000, "rotary_pct": 0.25,
        "tie_word_embeddings": False, "torch_dtype": "float32", "transformers_version": "4.24.0",
        "use_cache": True, "use_parallel_residual": True, "vocab_size": VOCAB,
    }


def write_probe(out, args, torch_rng=False):
    """probe.safetensors written by hand (8-byte header length, JSON header,
    little-endian data), so that no safetensors package is needed. Token ids
    from numpy's default_rng(1234), or (torch_rng, for a machine without
    numpy) torch's generator seeded 1234."""
    from array import array

    shape = (args.windows, args.context + 1)
    if torch_rng:
        g = torch.Generator().manual_seed(1234)
        ids = torch.randint(0, TOKENIZER_VOCAB, shape, generator=g, dtype=torch.int64).tolist()
    else:
        import numpy as np

        ids = np.random.default_rng(1234).integers(0, TOKENIZER_VOCAB, size=shape, dtype=np.int64).tolist()
    tensors = {"inputs": [row[:-1] for row in ids], "labels": [row[1:] for row in ids]}
    header, data, offset = {"__metadata__": {"generated_by": "scripts/make_hf_bench.py"}}, b"", 0
    for name, rows in tensors.items():
        a = array("q", [v for row in rows for v in row])
        if sys.byteorder != "little":
            a.byteswap()
        raw = a.tobytes()
        header[name] = {"dtype": "I64", "shape": [args.windows, args.context], "data_offsets": [offset, offset + len(raw)]}
        data += raw
        offset += len(raw)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    (out / "probe.safetensors").write_bytes(len(h).to_bytes(8, "little") + h + data)


def torch_only(args):
    out = Path(args.out_dir)
    rev = out / "step0"
    rev.mkdir(parents=True, exist_ok=True)
    shape = SIZES[args.size]
    d, f, layers = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"]
    torch.manual_seed(0)
    t0 = time.perf_counter()
    normal = lambda *s: torch.randn(*s) * 0.02  # noqa: E731
    sd = {"gpt_neox.embed_in.weight": normal(VOCAB, d)}
    for i in range(layers):
        p = f"gpt_neox.layers.{i}."
        for ln in ("input_layernorm", "post_attention_layernorm"):
            sd[p + ln + ".weight"], sd[p + ln + ".bias"] = torch.ones(d), torch.zeros(d)
        sd[p + "attention.query_key_value.weight"], sd[p + "attention.query_key_value.bias"] = normal(3 * d, d), torch.zeros(3 * d)
        sd[p + "attention.dense.weight"], sd[p + "attention.dense.bias"] = normal(d, d), torch.zeros(d)
        sd[p + "mlp.dense_h_to_4h.weight"], sd[p + "mlp.dense_h_to_4h.bias"] = normal(f, d), torch.zeros(f)
        sd[p + "mlp.dense_4h_to_h.weight"], sd[p + "mlp.dense_4h_to_h.bias"] = normal(d, f), torch.zeros(d)
    sd["gpt_neox.final_layer_norm.weight"], sd["gpt_neox.final_layer_norm.bias"] = torch.ones(d), torch.zeros(d)
    sd["embed_out.weight"] = normal(VOCAB, d)
    torch.save(sd, rev / "pytorch_model.bin")
    (rev / "config.json").write_text(json.dumps(hub_config(shape), indent=2) + "\n")
    write_probe(out, args, torch_rng=True)
    n_params = sum(t.numel() for t in sd.values())
    print(f"wrote {rev} (pytorch_model.bin, config.json; {n_params:,} parameters, {time.perf_counter() - t0:.1f} s, torch only) "
          f"and {out / 'probe.safetensors'}")


if __name__ == "__main__":
    main()
