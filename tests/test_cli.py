"""``python -m fastrnn``: the time-layer table (options, checks, exit status).

The recurrent table runs for about a minute at the book's shapes, so these tests run only
the time layers, with few rounds; the book-shape cases themselves also run (unchecked) in
``benchmarks/bench_time_layers.py``.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import fastrnn
from fastrnn import _cli

#: Few, short rounds: these tests check the output, not the times.
QUICK = ["--repeat", "3", "--budget", "0.01"]


def _small(case: _cli.TimeLayerCase) -> _cli.TimeLayerCase:
    return dataclasses.replace(case, sizes=dict.fromkeys(case.sizes, 4))


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("TimeAffine", "TimeAffine"),
        ("affine", "TimeAffine"),
        ("EMBEDDING", "TimeEmbedding"),
        ("timesoftmaxwithloss", "TimeSoftmaxWithLoss"),
        ("SigmoidWithLoss", "TimeSigmoidWithLoss"),
        ("softmax", "TimeSoftmaxWithLoss"),
        ("Sigmoid", "TimeSigmoidWithLoss"),
        ("dropout", "TimeDropout"),
        (" Attention ", "TimeAttention"),
        ("lstm", "TimeLSTM"),  # the recurrent aliases still work
        ("TimeBiLSTM", "TimeBiLSTM"),
    ],
)
def test_layers_option_accepts_every_time_layer(text, name):
    args = _cli.build_parser().parse_args(["check", "--layers", text])
    assert args.layers == [name]


def test_both_tables_by_default():
    for command in ("check", "bench"):
        args = _cli.build_parser().parse_args([command])
        assert args.layers == [*_cli.LAYERS, *_cli.TIME_LAYERS]
    assert {case.layer for case in _cli.TIME_LAYER_CASES} == set(_cli.TIME_LAYERS)


def test_unknown_layer_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        _cli.main(["check", "--layers", "softmax2"])
    assert exc.value.code == 2
    assert "unknown layer 'softmax2'" in capsys.readouterr().err


def test_recurrent_layer_name_stays_recurrent_only():
    # benchmarks/profile_layer.py relies on it for the recurrent layers' breakdown
    with pytest.raises(ValueError, match="unknown layer"):
        _cli.layer_name("affine")


def test_labels_and_ids():
    labels = {case.label for case in _cli.TIME_LAYER_CASES}
    assert "N=20 T=35 D=650 V=10000" in labels
    assert "N=20 T=35 D=650 M=10000 tied" in labels
    ids = [case.id for case in _cli.TIME_LAYER_CASES]
    assert len(set(ids)) == len(ids)
    assert not any("=" in i or " " in i for i in ids)  # usable with pytest -k


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", _cli.TIME_LAYER_CASES, ids=lambda case: case.id)
def test_every_case_checks_every_output(case, dtype):
    small = _small(case)
    state = np.random.get_state()
    check, reference_pass, fastrnn_pass = _cli.check_time_layer(small, dtype)
    assert check.passed, check
    assert np.random.get_state()[1].tolist() == state[1].tolist()  # restored
    assert reference_pass().keys() == fastrnn_pass().keys()


def test_tied_affine_runs_on_a_transposed_view():
    case = next(c for c in _cli.TIME_LAYER_CASES if c.note == "tied")
    dW = _small(case).pass_maker(np.float32)(fastrnn)()["dW"]
    assert dW.flags.f_contiguous and not dW.flags.c_contiguous  # zeros_like of W = E.T


def test_dropout_check_depends_on_the_seeding(monkeypatch):
    # Without the shared seed the masks differ, and the check would fail: proof that the
    # table compares masks drawn alike rather than anything lenient.
    case = _small(next(c for c in _cli.TIME_LAYER_CASES if c.layer == "TimeDropout"))
    seeds = iter(range(100))
    monkeypatch.setattr(_cli, "seed_for", lambda *keys: next(seeds))
    check, _, _ = _cli.check_time_layer(case, np.float32)
    assert not check.passed


def test_check_prints_the_time_layer_table(capsys):
    status = _cli.main(["check", "--layers", "TimeAffine", "sigmoidwithloss", *QUICK])
    out = capsys.readouterr().out
    assert status == 0
    assert "shape NxTxDxH" not in out  # no recurrent table
    rows = [line for line in out.splitlines() if line.startswith("Time")]
    assert [row.split()[0] for row in rows] == ["TimeAffine", "TimeAffine", "TimeSigmoidWithLoss"]
    assert all(" PASS " in row for row in rows)
    assert "N=20 T=35 D=650 M=10000 tied" in out
    assert "all 3 checks passed" in out


def test_bench_has_no_peak_or_gflops_for_time_layers(capsys):
    status = _cli.main(["bench", "--layers", "sigmoidwithloss", "--torch", *QUICK])
    out = capsys.readouterr().out
    assert status == 0
    assert "BLAS peak" not in out
    assert "GFLOP/s" not in out and "torch 1t ms" not in out and "vs torch" not in out
    assert "TimeSigmoidWithLoss  N=128 T=29" in out


def test_a_failing_time_layer_check_fails_the_run(capsys, monkeypatch):
    class Broken(fastrnn.TimeSigmoidWithLoss):
        def backward(self, dout=1):
            return super().backward(dout) * 1.001  # 0.1% off

    monkeypatch.setattr(fastrnn, "TimeSigmoidWithLoss", Broken)
    status = _cli.main(["check", "--layers", "sigmoidwithloss", *QUICK])
    out = capsys.readouterr().out
    assert status == 1
    assert "FAIL (dxs)" in out
    assert "FAILED: 1 of 1 checks" in out


def test_measure_interleaves_the_rounds(monkeypatch):
    """After warming each function up, round r calls each function that has an r-th round,
    in order; slower functions get fewer rounds."""
    calls = []
    monkeypatch.setattr(_cli, "settle", lambda fn, seconds: fn.estimate)

    def maker(name, estimate):
        def fn():
            calls.append(name)

        fn.estimate = estimate
        return fn

    slow, fast = maker("slow", 0.05), maker("fast", 0.01)
    times = _cli.measure_interleaved([slow, fast], max_rounds=50, budget=0.2)
    assert [len(t) for t in times] == [4, 20]  # budget / estimate, within [3, 50]
    assert calls[:8] == ["slow", "fast"] * 4
    assert calls[8:] == ["fast"] * 16
    assert all(t >= 0 for t in times[0] + times[1])
