#!/usr/bin/env python3
"""Checks scripts/bench/torch_analyze.py against the numpy golden values of
fixtures/golden/{tiny_cnn,tiny_mlp} (golden.json, golden_suite.json) and
fixtures/golden/mu.json. Each fixture folder is read as a run: checkpoint.safetensors
is step 0 ("A"), checkpoint_b.safetensors step 5 ("B").

  /opt/bench-venv/bin/python scripts/bench/check_torch_analyze_golden.py

Prints the largest absolute difference per (model, analyzer) and exits 1 if
one exceeds its tolerance.
"""

import csv
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
GOLDEN = os.path.join(ROOT, "fixtures", "golden")
sys.path.insert(0, HERE)
import torch_analyze as ta  # noqa: E402

# f32 forward vs the f64 reference; block fits of identity taps are ~1e-6 in f32
TOL = {"performance": 1e-5, "activation_regime": 1e-12, "unit_linear_fit": 1e-5,
       "block_linear_fit": 1e-5, "linearized_agreement": 1e-5, "cka_time": 1e-5,
       "weights": 1e-5, "representation": 1e-4, "mu": 1e-12}


def expected(model):
    d = os.path.join(GOLDEN, model)
    g = json.load(open(os.path.join(d, "golden.json")))
    s = json.load(open(os.path.join(d, "golden_suite.json")))
    exp = {}
    for k, v in g["performance"].items():
        exp[(0, "performance", None, k)] = v
    for r in g["layer_metrics"]:
        exp[(0, r["analyzer"], r["tap"], r["metric"])] = r["value"]
    for part, step in (("A", 0), ("B", 5)):
        for an in ("block_linear_fit", "weights", "representation"):
            for r in s[an][part]:
                exp[(step, an, r["tap"], r["metric"])] = r["value"]
    for r in s["linearized_agreement"]:
        exp[(0, "linearized_agreement", r["tap"], r["metric"])] = r["value"]
    exp[(0, "linearized_agreement", None, "linear_prefix_depth")] = float(s["linear_prefix_depth"])
    for r in s["cka"]:  # CKA(B, A): at step 5 to init, at step 0 to final
        exp[(5, "cka_time", r["tap"], "cka_to_init")] = r["value"]
        exp[(0, "cka_time", r["tap"], "cka_to_final")] = r["value"]
    return exp


def run_csv(model, mode):
    out = tempfile.mktemp(suffix=".csv")
    cmd = [sys.executable, os.path.join(HERE, "torch_analyze.py"), os.path.join(GOLDEN, model),
           "--steps", "all", "--mode", mode, "--csv", out, "--mu-samples", "500"]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    got = {}
    with open(out) as f:
        for r in csv.DictReader(f):
            tap = int(r["tap"]) if r["tap"] else None
            got[(int(r["step"]), r["analyzer"], tap, r["metric"])] = (
                float(r["value"]) if r["value"] else None)
    os.unlink(out)
    return got, res.stdout


def main():
    ok = True
    for model in ("tiny_cnn", "tiny_mlp"):
        for mode in ("together", "alone"):
            got, stdout = run_csv(model, mode)
            summary = json.loads(stdout.strip().splitlines()[-1])["summary"]
            exp = expected(model)
            worst = {}
            for key, v in exp.items():
                if key not in got:
                    print(f"{model} {mode}: missing {key}")
                    ok = False
                    continue
                g = got[key]
                if (v is None) != (g is None):
                    print(f"{model} {mode}: {key} expected {v} got {g}")
                    ok = False
                    continue
                diff = 0.0 if v is None else abs(g - v)
                an = key[1]
                if diff > worst.get(an, (-1, None))[0]:
                    worst[an] = (diff, key)
            for an, (diff, key) in sorted(worst.items()):
                flag = "ok" if diff <= TOL[an] else "FAIL"
                ok &= diff <= TOL[an]
                print(f"{model:8s} {mode:8s} {an:22s} n={sum(1 for k in exp if k[1] == an):3d} "
                      f"max|diff|={diff:.3g} ({flag}; worst {key[0]}/{key[2]}/{key[3]})")
            if summary["notes"]:
                print(f"  notes: {summary['notes']}")
    mu = json.load(open(os.path.join(GOLDEN, "mu.json")))
    worst = 0.0
    for c in mu["cases"]:
        r = ta.mu_stats(c["f"], c["s"], c["y"], c["K"])
        for k in ("mu", "i_f_y", "i_f_y_given_s", "i_f_s", "i_f_s_given_y", "agreement",
                  "surrogate_accuracy"):
            worst = max(worst, abs(r[k] - c["values"][k]))
        worst = max(worst, abs(ta.mu_stats(c["f"], c["f"], c["y"], c["K"])["mu"] - c["values"]["mu_f_f"]))
    print(f"mu.json  {len(mu['cases'])} cases: max|diff|={worst:.3g}")
    ok &= worst <= TOL["mu"]
    print("ALL OK" if ok else "SOME FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
