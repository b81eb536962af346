"""``benchmarks/startup.py``: its child processes run, report every part, and the table
shows each setting."""

from __future__ import annotations

import startup


def test_a_child_without_scipy_runs_the_layer_and_never_imports_scipy():
    durations = startup.run_child(block_scipy=True)
    assert durations["scipy imported"] is False
    assert all(durations[part] > 0 for part in startup.PARTS)
    parts = sum(durations[part] for part in startup.PARTS[:-1])
    assert abs(parts - durations["total"]) < 1e-6 * max(1.0, durations["total"])


def test_the_table_has_a_row_per_setting(monkeypatch):
    def fake_child(block_scipy):
        return dict.fromkeys(startup.PARTS, 0.5 if block_scipy else 0.75) | {
            "scipy imported": not block_scipy
        }

    monkeypatch.setattr(startup, "run_child", fake_child)
    monkeypatch.setattr(startup, "settings", lambda: [("without SciPy", True), ("with", False)])
    text = startup.table(startup.measure(samples=2))
    rows = text.splitlines()[2:]
    assert rows[0].startswith("| without SciPy | 0.50 s (0.50-0.50)") and rows[0].endswith("no |")
    assert rows[1].startswith("| with | 0.75 s (0.75-0.75)") and rows[1].endswith("yes |")
