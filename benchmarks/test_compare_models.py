"""The planner line of ``compare_models.py``'s report."""

from __future__ import annotations

import compare_models

from fastrnn._planner import Plan


def test_planner_line_lists_timed_and_pinned_shapes_in_order():
    plans = {
        (4, 128, 29, 256, "<f4"): Plan("packed", "packed", "measured twice"),
        (4, 1, 1, 256, "<f4"): Plan("direct", "direct", "batch of one"),
        (3, 20, 35, 100, "<f8"): Plan("direct", "scratch", "pinned"),
        (4, 128, 0, 256, "<f4"): Plan("direct", "direct", "empty"),
    }
    assert compare_models.planner_line(plans) == (
        "Planner routes (forward/backward per-step products): "
        "GRU N=20 T=35 H=100 float64: direct/scratch (pinned); "
        "LSTM N=128 T=29 H=256 float32: packed/packed (measured twice)."
    )


def test_planner_line_is_none_without_timed_shapes():
    assert compare_models.planner_line({}) is None
    only_decoding = {(4, 1, 1, 256, "<f4"): Plan("direct", "direct", "batch of one")}
    assert compare_models.planner_line(only_decoding) is None
