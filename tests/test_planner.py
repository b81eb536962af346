"""The planner: the orientation of the per-step products, measured on the machine that runs.

That every route gives the reference's numbers is checked in ``test_layers.py``
(``test_every_route_matches_reference``); here: the choice itself, its cost model, pinning,
caching and thread safety.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import threading
import time
import types

import numpy as np
import pytest
from _support import assert_close

import fastrnn
from fastrnn import _planner, reference
from fastrnn._planner import StepTimes


@pytest.fixture
def planner():
    """A fresh planner state for the test, the environment's pins restored after it."""
    _planner.forget()
    _planner.pin("auto")
    yield _planner
    _planner.pin(os.environ.get(_planner.PLAN_VARIABLE, ""))
    _planner.forget()


def _times(forward, backward, copy, pack=None):
    """Step times for the first routes (as many as given); ``pack`` adds the packed route's
    packing costs (the packed times are then the last ones given)."""
    forward_routes = [r for r in _planner.FORWARD_ROUTES if pack or r != "packed"]
    backward_routes = [r for r in _planner.BACKWARD_ROUTES if pack or r != "packed"]
    return StepTimes(
        dict(zip(forward_routes, forward, strict=True)),
        dict(zip(backward_routes, backward, strict=True)),
        copy,
        pack or (math.inf, math.inf),
    )


def test_choice_weighs_t_products_against_one_copy():
    # transposed saves 1 per step in both directions; the copy costs 10
    times = _times((5.0, 4.0), (5.0, 6.0, 4.0), copy=10.0)
    assert _planner.choose(times, T=5) == ("direct", "direct")  # 5 saved < 10 for the copy
    assert _planner.choose(times, T=11) == ("transposed", "transposed")  # 11 saved > 10
    scratch_wins = _times((5.0, 4.0), (5.0, 3.0, 2.9), copy=10.0)
    assert _planner.choose(scratch_wins, T=20)[1] == "scratch"  # 2 more than the copy costs
    assert _planner.choose(scratch_wins, T=200)[1] == "transposed"


def test_choice_weighs_packing_once_per_direction(monkeypatch):
    monkeypatch.setattr(_planner, "PACKED_HANDICAP", 1.0)
    # packed saves 3 per step over direct; packing costs 30 forward, 50 backward
    times = _times((5.0, 4.0, 2.0), (5.0, 6.0, 4.0, 2.0), copy=10.0, pack=(30.0, 50.0))
    assert _planner.choose(times, T=5) == ("direct", "direct")
    assert _planner.choose(times, T=20) == ("packed", "transposed")  # 70 < 90; 90 ties 90
    assert _planner.choose(times, T=30) == ("packed", "packed")


def test_packed_steps_must_win_by_the_handicap():
    handicap = _planner.PACKED_HANDICAP
    assert handicap > 1
    # no packing cost: only the per-step times compete
    close = _times((1.0, 9.0, 0.98 / handicap), (1.0, 9.0, 9.0, 0.98 / handicap), 1.0, (0, 0))
    assert _planner.choose(close, T=10) == ("packed", "packed")
    near_tie = _times((1.0, 9.0, 1.02 / handicap), (1.0, 9.0, 9.0, 0.97), 1.0, (0, 0))
    assert _planner.choose(near_tie, T=10) == ("direct", "direct")


def test_measured_plan_is_valid_and_measured_once(planner, monkeypatch):
    calls = []
    original = planner.measure

    def counting(*args):
        calls.append(args)
        return original(*args)

    monkeypatch.setattr(planner, "measure", counting)
    first = planner.plan(4, 6, 9, 7, np.float32)
    assert first.source == "measured"
    assert first.forward in planner.FORWARD_ROUTES
    assert first.backward in planner.BACKWARD_ROUTES
    assert planner.plan(4, 6, 9, 7, np.float32) is first
    planner.plan(4, 6, 30, 7, np.float32)  # another T: the same measurement, weighed again
    assert calls == [(4, 6, 7, np.float32)]
    planner.plan(4, 6, 9, 7, np.float64)  # another dtype: measured
    assert len(calls) == 2
    assert set(planner.plans()) == {
        (4, 6, 9, 7, "<f4"),
        (4, 6, 30, 7, "<f4"),
        (4, 6, 9, 7, "<f8"),
    }


@pytest.mark.parametrize("gates", [1, 3, 4])
def test_measurement_times_every_candidate(planner, gates):
    times = planner.measure(gates, 5, 8, np.float64)
    assert set(times.forward) == set(planner.FORWARD_ROUTES)
    assert set(times.backward) == set(planner.BACKWARD_ROUTES)
    once = [times.copy, *times.pack]
    for value in [*times.forward.values(), *times.backward.values(), *once]:
        assert 0 < value < 0.1


def test_batch_of_one_and_empty_need_no_measurement(planner, monkeypatch):
    monkeypatch.setattr(planner, "measure", lambda *a: pytest.fail("measured"))
    one = planner.plan(4, 1, 50, 650, np.float32)
    assert (one.forward, one.backward, one.source) == ("direct", "direct", "batch of one")
    assert planner.plan(4, 0, 5, 8, np.float32).source == "empty"
    assert planner.plan(4, 5, 0, 8, np.float32).source == "empty"


def test_pins(planner, monkeypatch):
    monkeypatch.setattr(planner, "measure", lambda *a: pytest.fail("measured"))
    planner.pin("forward=transposed,backward=scratch")
    chosen = planner.plan(4, 20, 35, 16, np.float32)
    assert (chosen.forward, chosen.backward, chosen.source) == ("transposed", "scratch", "pinned")
    planner.pin(" STATIC ")
    static = planner.plan(4, 20, 35, 650, np.float32)
    assert static == planner.static_plan(4, 20, 35, 650)
    assert (static.forward, static.backward) == ("transposed", "scratch")
    assert planner.static_plan(4, 10, 35, 100).backward == "transposed"
    assert planner.static_plan(1, 128, 7, 128) == planner.Plan("direct", "direct", "static")


def test_one_pinned_direction_measures_the_other(planner):
    planner.pin("backward=direct")
    chosen = planner.plan(1, 4, 6, 5, np.float64)
    assert chosen.backward == "direct" and chosen.source == "pinned+measured"
    assert chosen.forward in planner.FORWARD_ROUTES


@pytest.mark.parametrize(
    "text",
    ["fastest", "forward=sideways", "backward=transposed,left=direct", "forward:direct"],
)
def test_bad_pins_are_refused_naming_the_variable(planner, text):
    with pytest.raises(ValueError, match="FASTRNN_PLAN") as info:
        planner.pin(text)
    assert repr(text.strip().lower()) in str(info.value)


def test_bad_environment_value_fails_at_import():
    proc = subprocess.run(
        [sys.executable, "-c", "import fastrnn"],
        env=dict(os.environ, FASTRNN_PLAN="forward=upside-down"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode != 0
    assert "FASTRNN_PLAN must be" in proc.stderr


def test_environment_pin_reaches_the_layers():
    code = (
        "import numpy as np, fastrnn\n"
        "from fastrnn import _planner\n"
        "layer = fastrnn.TimeGRU(*[np.ones(s) * 0.1 for s in ((3, 12), (4, 12), (12,))])\n"
        "layer.forward(np.ones((5, 9, 3)))\n"
        "print(_planner.plans()[(3, 5, 9, 4, '<f8')].describe())\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=dict(os.environ, FASTRNN_PLAN="forward=transposed,backward=scratch"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "fwd transposed, bwd scratch (pinned)"


def test_threads_meeting_a_new_shape_share_one_measurement(planner, monkeypatch):
    calls = []
    original = planner.measure

    def counting(*args):
        calls.append(args)
        return original(*args)

    monkeypatch.setattr(planner, "measure", counting)
    barrier = threading.Barrier(4)
    found = []

    def worker():
        barrier.wait()
        found.append(planner.plan(4, 9, 12, 10, np.float32))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert len(set(found)) == 1


def test_layers_record_their_plan(planner, rng):
    layer = fastrnn.TimeLSTM(*[0.1 * rng.standard_normal(s) for s in ((3, 8), (2, 8), (8,))])
    layer.forward(rng.standard_normal((4, 6, 3)))
    assert (4, 4, 6, 2, "<f8") in planner.plans()


# --------------------------------------------------------------------------------------
# The second look
# --------------------------------------------------------------------------------------


class _Clock:
    """A planner clock the test moves by hand."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def second_look(planner, monkeypatch):
    """The planner with a hand-moved clock, a second look 10 s after a first timing, and
    ``measure`` returning the timings queued in ``looks.timings`` (recorded in
    ``looks.calls``)."""
    clock = _Clock()
    monkeypatch.setattr(planner, "_now", clock)
    monkeypatch.setattr(planner, "SECOND_LOOK_SECONDS", 10.0)
    looks = types.SimpleNamespace(clock=clock, timings=[], calls=[])

    def fake_measure(*args):
        looks.calls.append(args)
        return looks.timings.pop(0)

    monkeypatch.setattr(planner, "measure", fake_measure)
    return looks


# Disturbed: every route slow, packed the most (as timed inside a first training step).
_DISTURBED = _times((3.0, 4.0, 3.5), (3.0, 4.0, 3.2, 3.6), copy=1.0, pack=(1.0, 1.0))
# Quiet: packed fastest by far, the others as fast as they got.
_QUIET = _times((2.0, 3.0, 1.0), (2.0, 3.0, 2.5, 1.0), copy=0.5, pack=(0.2, 0.3))


def test_fastest_of_takes_the_minimum_per_candidate():
    merged = _planner.fastest_of(_DISTURBED, _QUIET)
    assert merged.forward == {"direct": 2.0, "transposed": 3.0, "packed": 1.0}
    assert merged.backward == {"direct": 2.0, "scratch": 3.0, "transposed": 2.5, "packed": 1.0}
    assert (merged.copy, merged.pack) == (0.5, (0.2, 0.3))
    one_faster = _times((1.0, 9.0, 9.0), (1.0, 9.0, 9.0, 9.0), copy=9.0, pack=(9.0, 9.0))
    assert _planner.fastest_of(one_faster, _QUIET).forward["direct"] == 1.0


def test_second_look_times_again_keeps_the_faster_and_chooses_again(second_look):
    planner, looks = _planner, second_look
    looks.timings += [_DISTURBED, _QUIET]
    first = planner.plan(4, 20, 30, 16, np.float32)
    assert (first.forward, first.backward, first.source) == ("direct", "direct", "measured")
    before = planner.generation()
    looks.clock.now += 9.9  # not yet due
    assert planner.generation() == before
    assert len(looks.calls) == 1
    looks.clock.now += 0.2
    after = planner.generation()  # due: the call that takes it
    assert after != before
    assert looks.calls == [(4, 20, 16, np.dtype(np.float32))] * 2
    again = planner.plan(4, 20, 30, 16, np.float32)
    assert (again.forward, again.backward, again.source) == ("packed", "packed", "measured twice")
    # another T later: the merged timings, no third timing
    assert planner.plan(4, 20, 3, 16, np.float32).source == "measured twice"
    looks.clock.now += 1000
    assert planner.generation() == after
    assert len(looks.calls) == 2


def test_second_look_that_confirms_the_routes_keeps_the_generation(second_look):
    planner, looks = _planner, second_look
    looks.timings += [_QUIET, _DISTURBED]  # slower everywhere the second time
    first = planner.plan(4, 20, 30, 16, np.float32)
    before = planner.generation()
    looks.clock.now += 10
    assert planner.generation() == before  # taken, but nothing changed: layers keep views
    again = planner.plan(4, 20, 30, 16, np.float32)
    assert (again.forward, again.backward) == (first.forward, first.backward) == ("packed",) * 2
    assert again.source == "measured twice"
    assert len(looks.calls) == 2


def test_second_looks_follow_each_shape_and_keep_pins(second_look):
    planner, looks = _planner, second_look
    planner.pin("backward=scratch")
    looks.timings += [_DISTURBED]
    assert planner.plan(4, 20, 30, 16, np.float32).source == "pinned+measured"
    looks.clock.now += 6
    looks.timings += [_DISTURBED]
    planner.plan(1, 8, 30, 16, np.float64)  # another shape, due 6 s later
    looks.timings += [_QUIET]
    looks.clock.now += 4
    planner.generation()  # the first shape's look only
    assert [call[:3] for call in looks.calls] == [(4, 20, 16), (1, 8, 16), (4, 20, 16)]
    chosen = planner.plan(4, 20, 30, 16, np.float32)
    assert (chosen.forward, chosen.backward) == ("packed", "scratch")  # the pin holds
    assert chosen.source == "pinned+measured twice"
    assert planner.plan(1, 8, 30, 16, np.float64).source == "pinned+measured"
    looks.timings += [_QUIET]
    looks.clock.now += 6
    planner.generation()
    assert len(looks.calls) == 4
    assert planner.plan(1, 8, 30, 16, np.float64).forward == "packed"


@pytest.mark.parametrize("pins", ["static", "forward=direct,backward=scratch"])
def test_no_second_look_once_both_directions_are_pinned(second_look, pins):
    planner, looks = _planner, second_look
    looks.timings += [_DISTURBED]
    planner.plan(4, 20, 30, 16, np.float32)
    planner.pin(pins)
    looks.clock.now += 100
    planner.generation()
    assert len(looks.calls) == 1
    assert planner.plan(4, 20, 30, 16, np.float32).source in ("static", "pinned")


def test_forget_cancels_the_second_look(second_look):
    planner, looks = _planner, second_look
    looks.timings += [_DISTURBED]
    planner.plan(4, 20, 30, 16, np.float32)
    planner.forget()
    looks.clock.now += 100
    planner.generation()
    assert len(looks.calls) == 1


def test_threads_share_one_second_look(second_look):
    planner, looks = _planner, second_look
    looks.timings += [_DISTURBED, _QUIET]
    planner.plan(4, 20, 30, 16, np.float32)
    looks.clock.now += 10
    barrier = threading.Barrier(4)
    seen = []

    def worker():
        barrier.wait()
        generation = planner.generation()
        seen.append((generation, planner.plan(4, 20, 30, 16, np.float32).forward))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(looks.calls) == 2  # a third timing would pop from an empty queue
    assert len(set(seen)) == 1  # every thread saw the new generation and routes
    assert seen[0][1] == "packed"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layer_takes_the_new_routes_after_the_second_look(second_look, rng, dtype):
    looks = second_look
    looks.timings += [_DISTURBED, _QUIET]
    shapes = ((3, 16), (4, 16), (16,))
    weights = [(0.3 * rng.standard_normal(s)).astype(dtype) for s in shapes]
    fast = fastrnn.TimeLSTM(*[w.copy() for w in weights], stateful=True)
    ref = reference.TimeLSTM(*[w.copy() for w in weights], stateful=True)
    routes = []
    for _ in range(3):
        xs = rng.standard_normal((20, 30, 3)).astype(dtype)
        dhs = rng.standard_normal((20, 30, 4)).astype(dtype)
        hs = fast.forward(xs)
        routes.append(fast._engine.saved["routes"])
        dxs = fast.backward(dhs)
        assert_close(hs, ref.forward(xs))
        assert_close(dxs, ref.backward(dhs))
        for g, r in zip(fast.grads, ref.grads, strict=True):
            assert_close(g, r)
        looks.clock.now += 6
    assert [(r.forward, r.backward) for r in routes] == [
        ("direct", "direct"),
        ("direct", "direct"),
        ("packed", "packed"),  # the second look, taken as the third forward began
    ]


@pytest.mark.slow
def test_second_looks_taken_for_real_while_threads_train(planner, monkeypatch):
    """The second look's real timing, taken inside layer calls while other threads run
    their own layers (packed products on the same BLAS workers): every shape ends timed
    twice, and every result matches the reference."""
    monkeypatch.setattr(planner, "SECOND_LOOK_SECONDS", 0.05)
    errors = []

    def worker(seed):
        rng = np.random.default_rng(seed)
        for step in range(8):
            N, H, T = (8, 16, 24)[(seed + step) % 3], (16, 32)[step % 2], 5 + step % 4
            params = [0.3 * rng.standard_normal(s) for s in ((3, 4 * H), (H, 4 * H), (4 * H,))]
            params = [p.astype(np.float32) for p in params]
            fast = fastrnn.TimeLSTM(*[p.copy() for p in params])
            ref = reference.TimeLSTM(*[p.copy() for p in params])
            xs = rng.standard_normal((N, T, 3)).astype(np.float32)
            dhs = rng.standard_normal((N, T, H)).astype(np.float32)
            try:
                assert_close(fast.forward(xs), ref.forward(xs))
                time.sleep(0.03)  # let second looks fall due between the calls
                assert_close(fast.backward(dhs), ref.backward(dhs))
                for got, expected in zip(fast.grads, ref.grads, strict=True):
                    assert_close(got, expected)
            except AssertionError as err:  # raised in the test thread below
                errors.append(err)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    time.sleep(0.06)
    planner.generation()  # the last shapes' looks
    assert not errors, errors[0]
    sources = {chosen.source for chosen in planner.plans().values()}
    assert sources == {"measured twice"}
