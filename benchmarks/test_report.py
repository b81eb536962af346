"""``benchmarks/report.py`` on a hand-made pytest-benchmark JSON holding every kind."""

from __future__ import annotations

import json

import pytest
import report


def _bench(group, median, **info):
    stats = {"median": median}
    return {"group": group, "name": f"test[{group}]", "stats": stats, "extra_info": info}


def _document(*benchmarks):
    return {"machine_info": {}, "benchmarks": list(benchmarks)}


LAYER = [
    _bench("TimeLSTM 20x35x650x650", 0.4, kind="layer", impl="reference", layer="TimeLSTM",
           shape=[20, 35, 650, 650], flop=10**10),
    _bench("TimeLSTM 20x35x650x650", 0.1, kind="layer", impl="fastrnn", layer="TimeLSTM",
           shape=[20, 35, 650, 650], flop=10**10),
]  # fmt: skip
TIME_LAYER = [
    _bench("TimeAffine N=20 T=35 D=650 M=10000 tied", 0.30, kind="time-layer", impl="reference",
           layer="TimeAffine", shape="N=20 T=35 D=650 M=10000 tied", flop=None),
    _bench("TimeAffine N=20 T=35 D=650 M=10000 tied", 0.25, kind="time-layer", impl="fastrnn",
           layer="TimeAffine", shape="N=20 T=35 D=650 M=10000 tied", flop=None,
           foreign_load=0.9),
    _bench("TimeEmbedding N=20 T=35 D=650 V=10000", 0.4, kind="time-layer", impl="reference",
           layer="TimeEmbedding", shape="N=20 T=35 D=650 V=10000", flop=None),
]  # fmt: skip
MODEL = [
    _bench("Rnnlm step", 0.2, kind="model", impl="reference", model="Rnnlm", phase="step"),
    _bench("Rnnlm step", 0.1, kind="model", impl="recurrent", model="Rnnlm", phase="step"),
    _bench("Rnnlm step", 0.05, kind="model", impl="fastrnn", model="Rnnlm", phase="step"),
    _bench("Rnnlm step", 0.04, kind="model", impl="torch-1t", model="Rnnlm", phase="step"),
    _bench("Rnnlm generate", 0.3, kind="model", impl="reference", model="Rnnlm",
           phase="generate", tokens=100, per_token=0.003),
    _bench("Rnnlm generate", 0.1, kind="model", impl="fastrnn", model="Rnnlm",
           phase="generate", tokens=100, per_token=0.001),
]  # fmt: skip
FOREIGN = [{"group": None, "name": "test_other", "stats": {"median": 1.0}, "extra_info": {}}]


def _table_rows(text: str, heading: str) -> list[str]:
    section = text.split(heading, 1)[1].split("\n## ", 1)[0]
    return [line for line in section.splitlines() if line.startswith("| ") and "---" not in line]


def test_every_kind_gets_its_section():
    text, speedups = report.render(_document(*LAYER, *TIME_LAYER, *MODEL, *FOREIGN))
    assert [s.group for s in speedups] == ["TimeLSTM 20x35x650x650"]  # the plot: recurrent
    rows = _table_rows(text, "## Other time layers")
    assert rows[0] == "| group | reference | fastrnn | fastrnn vs reference |"
    assert rows[1] == "| TimeAffine N=20 T=35 D=650 M=10000 tied | 300 ms | 250 ms ⚠ | 1.20× |"
    assert rows[2] == "| TimeEmbedding N=20 T=35 D=650 V=10000 | 400 ms | – | – |"
    rows = _table_rows(text, "## The book's models")
    assert rows[0] == "| model | reference | recurrent | fastrnn | torch-1t |"
    assert rows[1] == "| Rnnlm step | 200 ms | 100 ms (2.00×) | 50 ms (4.00×) | 40 ms (5.00×) |"
    assert rows[2] == "| Rnnlm generate (100 ids) | 300 ms | – | 100 ms (3.00×) | – |"
    assert report.BUSY_NOTE in text
    # the time layers and models stay out of the recurrent tables
    for heading in ("## Forward + backward", "## Compute efficiency"):
        assert all("Affine" not in r and "Rnnlm" not in r for r in _table_rows(text, heading))


@pytest.mark.parametrize("entries", [MODEL, TIME_LAYER], ids=["models-only", "time-layers-only"])
def test_a_file_without_recurrent_layers(entries, tmp_path, capsys):
    path = tmp_path / "run.json"
    path.write_text(json.dumps(_document(*entries)), encoding="utf-8")
    assert report.main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "## Forward + backward" not in out
    assert ("## The book's models" in out) == (entries is MODEL)
    assert ("## Other time layers" in out) == (entries is TIME_LAYER)
    assert report.main([str(path), "--plot", str(tmp_path / "plot.png")]) == 1  # nothing to plot
    assert "no layer benchmarks to plot" in capsys.readouterr().err
