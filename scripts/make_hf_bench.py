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

Then:  python3 scripts/hf_peer.py OUT_DIR --probe OUT_DIR/probe.safetensors --threads 2
"""

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import numpy as np
import torch
from safetensors.numpy import save_file

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
    args = ap.parse_args(argv)

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

    rng = np.random.default_rng(1234)
    ids = rng.integers(0, TOKENIZER_VOCAB, size=(args.windows, args.context + 1), dtype=np.int64)
    save_file({"inputs": np.ascontiguousarray(ids[:, :-1]), "labels": np.ascontiguousarray(ids[:, 1:])},
              str(out / "probe.safetensors"), metadata={"generated_by": "scripts/make_hf_bench.py"})
    files = sorted(p.name for p in rev.iterdir())
    size = sum(p.stat().st_size for p in rev.iterdir())
    print(f"wrote {rev} ({', '.join(files)}; {size / 1e6:.1f} MB, {n_params:,} parameters, {t_model:.1f} s) "
          f"and {out / 'probe.safetensors'} (inputs/labels int64 [{args.windows}, {args.context}])")


if __name__ == "__main__":
    main()
