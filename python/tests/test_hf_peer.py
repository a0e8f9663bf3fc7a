"""The benchmark peer (scripts/hf_peer.py --all) computes what lintrace's
analyzers compute on a Hugging Face series: every number of both, on a
two-revision GPT-NeoX series written by transformers here, agrees. This is
what makes BENCHMARKS.md's side-by-side timings a comparison of the same work,
and an independent check of lintrace's sequence-model metrics."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import REPO, analyze

transformers = pytest.importorskip("transformers")


def write_series(root):
    cfg = transformers.GPTNeoXConfig(vocab_size=256, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                     intermediate_size=128, max_position_embeddings=64, rotary_pct=0.25,
                                     use_parallel_residual=True, attn_implementation="eager")
    for i, step in enumerate((0, 100)):
        torch.manual_seed(i)
        model = transformers.AutoModelForCausalLM.from_config(cfg)
        model.save_pretrained(root / f"step{step}")
    from safetensors.numpy import save_file

    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, size=(6, 48)).astype(np.int64)
    y = np.roll(x, -1, axis=1)
    save_file({"inputs": x, "labels": y}, str(root / "probe.safetensors"))


def peer_values(path):
    """{(revision, analyzer, metric, tap, layer_kind): value} from the peer's JSON."""
    out = {}
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        r = rec["revision"]
        for layer in rec["layers"]:
            i = layer["layer"]
            for m in ("nonlinearity", "mean_unit_r2", "n_units_varying", "n_units"):
                out[(r, "unit_linear_fit", m, i, "dense")] = layer[m]
        for b in rec["block_linear_fit"]:
            for kind, key in (("dense", "tap"), ("attention_sublayer",) * 2, ("mlp_sublayer",) * 2,
                              ("transformer_block",) * 2):
                for m, v in b[key].items():
                    if not (kind == "dense" and m == "linearity_score_residual"):
                        out[(r, "block_linear_fit", m, b["layer"], kind)] = v
        for an in ("representation", "cka_time", "weights"):
            for row in rec[an]:
                for m, v in row.items():
                    if m != "layer":
                        out[(r, an, m, row["layer"], "dense")] = v
        for row in rec["linearized_agreement"]:
            for m, v in row.items():
                if m != "layer":
                    out[(r, "linearized_agreement", m, row["layer"], "dense")] = v
    return out


def test_peer_computes_lintraces_numbers(tmp_path):
    series = tmp_path / "series"
    series.mkdir()
    write_series(series)
    peer_json = tmp_path / "peer.json"
    subprocess.run([sys.executable, str(REPO / "scripts" / "hf_peer.py"), str(series), "--probe",
                    str(series / "probe.safetensors"), "--threads", "1", "--all", "--json", str(peer_json)],
                   check=True, capture_output=True, text=True, timeout=600)
    analyze(series, "--probe", series / "probe.safetensors")
    import polars as pl

    lm = pl.read_parquet(series / "analysis" / "layer_metrics.parquet")
    ours = {(r["revision"], r["analyzer"], r["metric"], r["tap"], r["layer_kind"]): r["value"] for r in lm.iter_rows(named=True)}
    peer = peer_values(peer_json)
    assert len(peer) > 100
    compared = 0
    for key, want in peer.items():
        assert key in ours, f"lintrace wrote no {key}"
        got = ours[key]
        if want is None:
            assert got is None, (key, got)
            continue
        # Agreements are counts over the same tokens; the rest agree to f64
        # rounding of f32 activations (the variants: f32 logits of two
        # implementations, so a near-tie could flip one token).
        tol = 1e-5 * max(1.0, abs(want))
        assert got is not None and abs(got - want) <= tol, (key, got, want)
        compared += 1
    # cka_time and weights against the other revision are real comparisons.
    assert ours[("step100", "cka_time", "cka_to_init", 0, "dense")] < 1.0
    assert ours[("step100", "weights", "rel_dist_from_init", 0, "dense")] > 0.1
    assert compared > 100
