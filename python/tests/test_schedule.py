"""The schedule, against src/config/steps.rs's unit tests and against
lintrace-train itself."""

import json
import subprocess

import pytest

import lintrace
from conftest import binary, steps_in


def test_known_lists():
    # The lists of src/config/steps.rs's tests.
    assert lintrace.log_spaced_steps(16, per_octave=2) == [0, 1, 2, 3, 4, 6, 8, 11, 16]
    assert lintrace.log_spaced_steps(100, 8) == [0, 1, 2, 3, 4, 6, 7, 10, 13, 18, 24, 32, 42, 56, 75, 100]
    assert lintrace.log_spaced_steps(25, 1, every=10) == [0, 1, 10, 20, 25]
    assert lintrace.log_spaced_steps(0) == [0]
    assert lintrace.log_spaced_steps(5, per_decade=0) == [0, 5]


def test_rust_rounding_not_pythons():
    # 10^(i/k) never lands on a half, but 2.5 would: Rust's round gives 3,
    # Python's round 2. The helper follows Rust.
    from lintrace.schedule import _round_half_away

    assert [_round_half_away(v) for v in (0.5, 1.5, 2.5, 2.4999999)] == [1, 2, 3, 2]


@pytest.mark.parametrize("total", [0, 1, 7, 100, 1234, 10**7])
@pytest.mark.parametrize("kw", [{}, {"per_decade": 3}, {"per_decade": 2.5}, {"per_octave": 2}, {"every": 50}])
def test_predicate_matches_list(total, kw):
    steps = lintrace.log_spaced_steps(total, **kw)
    sched = lintrace.Schedule(total, **kw)
    upto = min(total, 3000)
    assert [s for s in range(upto + 1) if s in sched] == [s for s in steps if s <= upto]
    assert all(s in sched for s in steps)
    assert all(lintrace.is_log_spaced_step(s, total, **kw) for s in steps[:50])
    # Unknown total: the same points, without the final step.
    open_ended = lintrace.Schedule(None, **kw)
    assert [s for s in range(upto + 1) if s in open_ended] == [s for s in steps if s <= upto and (s != total or s in lintrace.log_spaced_steps(total + 1, **kw))]


# (steps, flags): lengths and densities; each run is a few seconds of a
# 4-unit MLP on lintrace's Gaussian-mixture data.
CASES = [
    (1, []),
    (7, []),
    (100, []),
    (1234, []),
    (1234, ["--ckpt-per-decade", "3"]),
    (300, ["--ckpt-per-decade", "2.5"]),
    (300, ["--ckpt-per-octave", "2"]),
    (120, ["--ckpt-per-decade", "4", "--ckpt-every", "25"]),
]


def _kw(flags):
    kw = {}
    for name, value in zip(flags[::2], flags[1::2]):
        key = {"--ckpt-per-decade": "per_decade", "--ckpt-per-octave": "per_octave", "--ckpt-every": "every"}[name]
        kw[key] = int(value) if key == "every" else float(value)
    return kw


@pytest.mark.parametrize("total,flags", CASES)
def test_matches_lintrace_train(tmp_path, total, flags):
    train = binary("lintrace-train")
    name = f"s{total}"
    cmd = [str(train), "--model", "mlp", "--width", "4", "--depth", "1", "--dataset", "gaussian-mixture",
           "--batch-size", "8", "--probe-size", "16", "--steps", str(total), "--out", str(tmp_path),
           "--name", name, "--quiet", *flags]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    run = tmp_path / name
    written = steps_in(run / "checkpoints")
    expected = lintrace.log_spaced_steps(total, **_kw(flags))
    assert written == expected
    assert json.loads((run / "run.json").read_text())["checkpoint_steps"] == expected
