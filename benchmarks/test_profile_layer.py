"""``benchmarks/profile_layer.py``: the element-wise line by interleaved difference, and a
whole breakdown on a small shape."""

from __future__ import annotations

import re
from types import SimpleNamespace

import profile_layer
import pytest


class DriftingClock:
    """A ``perf_counter`` stand-in: runs advance it by their work times the machine's
    current slowness, which grows by ``drift`` after every run."""

    def __init__(self, drift: float):
        self.now = 0.0
        self.slowness = 1.0
        self.drift = drift

    def __call__(self) -> float:
        return self.now

    def run(self, seconds_per_rep: float):
        def run(reps):
            self.now += reps * seconds_per_rep * self.slowness
            self.slowness += self.drift

        return run


@pytest.mark.parametrize("drift", [0.0, 0.05])
def test_interleaved_difference_sees_one_speed_per_round(monkeypatch, drift):
    """A total of 10 ms made of 6 + 3 ms parts leaves 1 ms; with the machine slowing down
    from run to run, the interleaved rounds stay near it, while timing the total and
    then its parts one after another (the old way) lands the drift in the difference."""
    clock = DriftingClock(drift)
    monkeypatch.setattr(profile_layer, "time", SimpleNamespace(perf_counter=clock))
    total, parts = clock.run(10e-3), [clock.run(6e-3), clock.run(3e-3)]
    interleaved = profile_layer.interleaved_difference([total], parts, samples=9)
    if drift == 0.0:
        assert interleaved == pytest.approx(1e-3)
        return
    # The machine slows down by up to 2.5x over the rounds, the 1 ms with it; within a
    # round, the drift adds a little to the parts timed after the total.
    assert 0.5e-3 < interleaved < 2.5e-3
    clock.slowness = 1.0
    sequential = profile_layer.median_seconds(total, 9) - sum(
        profile_layer.median_seconds(part, 9) for part in parts
    )
    assert sequential < 0  # the negative lines the profiler used to print


def test_breakdown_of_a_small_lstm(capsys):
    """The whole profiler on a small shape: the phase lines, both element-wise lines."""
    assert profile_layer.main(["lstm", "3", "4", "5", "6", "--repeat", "3"]) == 0
    out = capsys.readouterr().out
    assert "TimeLSTM N=3 T=4 D=5 H=6 float32" in out
    for phase in ("GEMM input projection", "GEMM dWh", "(kernel total, timed whole)"):
        assert phase in out
    element_wise = re.findall(r"cell element-wise \(kernel total[^)]*\)\s+(-?[\d.]+)", out)
    assert len(element_wise) == 2
