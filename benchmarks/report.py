"""Turn a pytest-benchmark JSON file into a markdown table of ratios.

Usage
-----
::

    python -m pytest benchmarks --benchmark-enable --benchmark-json=out.json
    python benchmarks/report.py out.json [--plot speedups.png]

Prints, in markdown:

* the machine the benchmarks ran on (CPU, cores, NumPy/Numba/SciPy/PyTorch versions, BLAS
  libraries and their threads), from the JSON (the current machine if the JSON lacks it);
* the BLAS peak: the median GFLOP/s of the 2048^3 sgemm through NumPy's BLAS (fastrnn's too);
* per layer and shape, the median of every implementation, fastrnn's speedup over the
  reference and over PyTorch (its best thread setting), and fastrnn's GFLOP/s and share
  of the sgemm peak;
* the compute efficiency of every implementation at 20x35x650x650, the book's largest;
* per other time layer and shape (``bench_time_layers.py``): the reference's and fastrnn's
  medians and fastrnn's speedup;
* the decoding step (N=1, T=1): each implementation's median and its ratio to the two
  matrix-vector products the step needs, i.e. the decode overhead;
* the book's models (``bench_models.py``): per model, a training step's and a generation's
  median for every layer set, and each one's speedup over the all-reference set.

Only ratios between implementations measured in the same run mean much on a shared or
noisy machine; absolute times are shown for reference.

``--plot FILE`` also draws the speedups per shape (needs matplotlib).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from dataclasses import dataclass

#: Column order of implementations; unknown ones follow in name order.
IMPLEMENTATION_ORDER = ["reference", "fastrnn", "torch-1t", "torch-2t"]
#: The same for the layer sets of the model benchmarks.
MODEL_IMPLEMENTATION_ORDER = ["reference", "recurrent", "fastrnn", "torch-1t", "torch-2t"]
DECODE_BASELINE = "two-matvec"
PEAK_IMPLEMENTATION = "sgemm-numpy"
BIG_SHAPE = [20, 35, 650, 650]
#: Foreign load (cores) above which a measurement is flagged as taken on a busy machine.
BUSY_THRESHOLD = 0.25
BUSY_MARK = " ⚠"
BUSY_NOTE = (
    f"{BUSY_MARK.strip()} marks measurements taken while other processes kept more than "
    f"{BUSY_THRESHOLD} of a core busy: multithreaded BLAS waits for its slowest thread, so "
    "these can be several times too slow. Rerun on a quiet machine."
)


@dataclass
class Entry:
    """One benchmark of the JSON: an implementation in a group."""

    group: str
    kind: str
    impl: str
    layer: str | None
    shape: list[int] | str | None  # [N, T, D, H], or a label for kind "time-layer"
    flop: int | None
    median: float  # seconds
    foreign_load: float | None = None  # cores other processes kept busy meanwhile
    model: str | None = None  # kind "model": the model, its phase and ids per generation
    phase: str | None = None
    tokens: int | None = None

    @property
    def busy(self) -> bool:
        return self.foreign_load is not None and self.foreign_load > BUSY_THRESHOLD

    @property
    def gflops(self) -> float | None:
        return self.flop / self.median / 1e9 if self.flop and self.median > 0 else None


def load_entries(data: dict) -> list[Entry]:
    """The benchmarks of a pytest-benchmark JSON document that carry fastrnn's extra_info."""
    entries = []
    for bench in data.get("benchmarks", []):
        info = bench.get("extra_info") or {}
        if "kind" not in info or "impl" not in info:
            continue  # not one of ours
        entries.append(
            Entry(
                group=bench.get("group") or bench["name"],
                kind=info["kind"],
                impl=info["impl"],
                layer=info.get("layer"),
                shape=info.get("shape"),
                flop=info.get("flop"),
                median=bench["stats"]["median"],
                foreign_load=info.get("foreign_load"),
                model=info.get("model"),
                phase=info.get("phase"),
                tokens=info.get("tokens"),
            )
        )
    return entries


def _ordered(impls, order=IMPLEMENTATION_ORDER) -> list[str]:
    known = [i for i in order if i in impls]
    return known + sorted(set(impls) - set(known))


def format_time(seconds: float | None) -> str:
    """A median as ms (or µs below 0.1 ms), three significant digits."""
    if seconds is None:
        return "–"
    if seconds < 1e-4:
        return f"{seconds * 1e6:.3g} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds:.3g} s"


def format_ratio(ratio: float | None) -> str:
    return "–" if ratio is None else f"{ratio:.2f}×"


def markdown_table(headers: list[str], rows: list[list[str]], left: int = 1) -> str:
    """A markdown table; the first ``left`` columns left-aligned, the rest right-aligned."""
    align = ["---" if i < left else "---:" for i in range(len(headers))]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------


def machine_section(data: dict) -> list[str]:
    """Markdown lines describing the machine of the run."""
    info = (data.get("machine_info") or {}).get("fastrnn")
    source = "as recorded in the JSON"
    if info is None:
        from fastrnn._cli import machine_info

        info = machine_info()
        source = "the JSON has no fastrnn machine info: this is the machine running the report"
    lines = ["## Machine", "", f"_{source}_", ""]
    lines.append(
        f"- CPU: {info['cpu']}, {info['logical_cores']} logical cores "
        f"({info['usable_cores']} usable), Python {info['python']}"
    )
    versions = ", ".join(f"{name} {v}" for name, v in info["versions"].items() if v)
    lines.append(f"- Versions: {versions}")
    if info.get("blas") is None:
        lines.append("- BLAS: unknown (threadpoolctl was not installed)")
    else:
        for lib in info["blas"]:
            details = [
                str(v)
                for v in (
                    lib.get("api"),
                    lib.get("version"),
                    lib.get("architecture"),
                    lib.get("threading_layer"),
                )
                if v
            ]
            details.append(f"{lib['threads']} threads")
            lines.append(
                f"- {(lib.get('user_api') or 'blas').upper()} thread pool: "
                f"`{lib['library']}` ({', '.join(details)})"
            )
    if info.get("env"):
        lines.append("- Environment: " + ", ".join(f"`{k}={v}`" for k, v in info["env"].items()))
    if data.get("datetime"):
        lines.append(f"- Run: {data['datetime']}")
    return lines


def blas_peak(entries: list[Entry]) -> float | None:
    """GFLOP/s of the sgemm peak benchmark, or None if it was not run."""
    for e in entries:
        if e.kind == "peak" and e.impl == PEAK_IMPLEMENTATION:
            return e.gflops
    return None


def peak_section(entries: list[Entry]) -> list[str]:
    """The BLAS peak line(s)."""
    peaks = [e for e in entries if e.kind == "peak"]
    if not peaks:
        return ["_No BLAS peak benchmark in this run: shares of peak are not shown._"]
    lines = ["## BLAS peak", ""]
    for e in peaks:
        mark = BUSY_MARK if e.busy else ""
        lines.append(
            f"- {e.impl} ({e.group}): {e.gflops:.1f} GFLOP/s, median {format_time(e.median)}{mark}"
        )
    return lines


@dataclass
class Speedups:
    """fastrnn's speedups in one group, for the table and the plot."""

    group: str
    over_reference: float | None
    over_torch: float | None


def layer_section(entries: list[Entry], peak: float | None) -> tuple[list[str], list[Speedups]]:
    """The forward+backward table, and the speedups it shows."""
    groups = _groups(entries, "layer")
    if not groups:
        return [], []
    impls = _ordered({impl for g in groups.values() for impl in g})
    headers = ["group", *[f"{i}" for i in impls], "fastrnn vs reference", "fastrnn vs torch"]
    headers += ["fastrnn GFLOP/s", "% of sgemm peak"]
    rows, speedups = [], []
    for group, by_impl in groups.items():
        fast = by_impl.get("fastrnn")
        ref = by_impl.get("reference")
        torch = [e for i, e in by_impl.items() if i.startswith("torch")]
        best_torch = min((e.median for e in torch), default=None)
        over_ref = ref.median / fast.median if fast and ref else None
        over_torch = best_torch / fast.median if fast and best_torch else None
        gflops = fast.gflops if fast else None
        share = f"{100 * gflops / peak:.0f}%" if gflops and peak else "–"
        rows.append(
            [group, *[_median_cell(by_impl.get(i)) for i in impls]]
            + [format_ratio(over_ref), format_ratio(over_torch)]
            + [f"{gflops:.1f}" if gflops else "–", share]
        )
        speedups.append(Speedups(group, over_ref, over_torch))
    note = (
        "Speedups are ratios of medians (> 1: fastrnn is faster); _vs torch_ uses PyTorch's "
        "best thread setting. GFLOP/s count the matrix products only. PyTorch's GRU applies "
        "the reset gate after the recurrent product (the book's before): same products, "
        "different outputs."
    )
    return _section("Forward + backward, median per call", headers, rows, note, groups), speedups


def efficiency_section(entries: list[Entry], peak: float | None) -> list[str]:
    """GFLOP/s and share of peak of every implementation at the book's largest shape."""
    big = [e for e in entries if e.kind == "layer" and e.shape == BIG_SHAPE]
    if not big:
        return []
    rows = []
    for e in sorted(big, key=lambda e: (e.layer or "", _ordered([e.impl]))):
        share = f"{100 * e.gflops / peak:.0f}%" if e.gflops and peak else "–"
        rows.append([e.group, e.impl, format_time(e.median), f"{e.gflops:.1f}", share])
    lines = [f"## Compute efficiency at {'x'.join(map(str, BIG_SHAPE))}", ""]
    lines.append(
        markdown_table(["group", "implementation", "median", "GFLOP/s", "% of sgemm peak"], rows, 2)
    )
    return lines


def _section(
    title: str, headers: list[str], rows: list[list[str]], note: str, groups: dict
) -> list[str]:
    """A titled table with its note, and the busy-machine note when a row needs it."""
    lines = [f"## {title}", "", markdown_table(headers, rows), "", note]
    if any(e.busy for g in groups.values() for e in g.values()):
        lines += ["", BUSY_NOTE]
    return lines


def _groups(entries: list[Entry], kind: str) -> dict[str, dict[str, Entry]]:
    """Entries of ``kind`` by group, then by implementation, in the order of the JSON."""
    groups: dict[str, dict[str, Entry]] = defaultdict(dict)
    for e in entries:
        if e.kind == kind:
            groups[e.group][e.impl] = e
    return groups


def _median_cell(e: Entry | None) -> str:
    if e is None:
        return "–"
    return format_time(e.median) + (BUSY_MARK if e.busy else "")


def time_layer_section(entries: list[Entry]) -> list[str]:
    """The other time layers: reference and fastrnn medians and fastrnn's speedup."""
    groups = _groups(entries, "time-layer")
    if not groups:
        return []
    impls = _ordered({impl for g in groups.values() for impl in g})
    rows = []
    for group, by_impl in groups.items():
        fast, ref = by_impl.get("fastrnn"), by_impl.get("reference")
        over_ref = ref.median / fast.median if fast and ref else None
        rows.append([group, *[_median_cell(by_impl.get(i)) for i in impls], format_ratio(over_ref)])
    note = (
        "Speedups are ratios of medians (> 1: fastrnn is faster). tied: TimeAffine's W is "
        "E.T, a transposed view, as weight tying passes it; p: TimeDropout's ratio."
    )
    title = "Other time layers: forward + backward, median per call"
    return _section(title, ["group", *impls, "fastrnn vs reference"], rows, note, groups)


def model_section(entries: list[Entry]) -> list[str]:
    """The book's models: step and generation medians per layer set, and their speedups."""
    groups = _groups(entries, "model")
    if not groups:
        return []
    impls = _ordered({impl for g in groups.values() for impl in g}, MODEL_IMPLEMENTATION_ORDER)
    rows = []
    for group, by_impl in groups.items():
        ref = by_impl.get("reference")
        tokens = next((e.tokens for e in by_impl.values() if e.tokens), None)
        label = f"{group} ({tokens} ids)" if tokens else group
        cells = []
        for impl in impls:
            e = by_impl.get(impl)
            cell = _median_cell(e)
            if e is not None and ref is not None and impl != "reference":
                cell += f" ({format_ratio(ref.median / e.median)})"
            cells.append(cell)
        rows.append([label, *cells])
    note = (
        "In parentheses: speedup over the all-reference layer set (> 1: faster). "
        "_recurrent_: the reference layers with fastrnn's recurrent ones; _fastrnn_: every "
        "layer from fastrnn.time_layers. A generation produces the ids in parentheses, one "
        "N=1, T=1 call per layer and id. `benchmarks/compare_models.py` measures the same "
        "interleaved, with a per-layer breakdown."
    )
    title = "The book's models: median per training step or generation"
    return _section(title, ["model", *impls], rows, note, groups)


def decode_section(entries: list[Entry]) -> list[str]:
    """The decoding step: medians and ratios to the two matrix-vector products."""
    decode = {e.impl: e for e in entries if e.kind == "decode"}
    if not decode:
        return []
    baseline = decode.get(DECODE_BASELINE)
    group = next(iter(decode.values())).group
    rows = []
    for impl in _ordered(decode):
        e = decode[impl]
        ratio = e.median / baseline.median if baseline else None
        rows.append([impl, _median_cell(e), format_ratio(ratio)])
    lines = [f"## Decoding step: {group}", ""]
    lines.append(markdown_table(["implementation", "median", f"time / {DECODE_BASELINE}"], rows))
    if baseline and "fastrnn" in decode:
        overhead = decode["fastrnn"].median / baseline.median
        lines += [
            "",
            f"**Decode overhead: {overhead:.2f}×** — a fastrnn step takes {overhead:.2f} times "
            f"as long as its two matrix-vector products alone ({DECODE_BASELINE}: "
            f"{format_time(baseline.median)}).",
        ]
    return lines


def plot_speedups(speedups: list[Speedups], path: str) -> None:
    """Bar chart of fastrnn's speedups per group, log scale; raises ImportError without
    matplotlib."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [s.group.replace(" ", "\n", 1) for s in speedups]
    positions = range(len(speedups))
    width = 0.4
    fig, ax = plt.subplots(figsize=(max(6.0, 0.75 * len(speedups) + 2), 4.5))
    series = [("vs reference", [s.over_reference for s in speedups], -width / 2)]
    if any(s.over_torch for s in speedups):
        series.append(("vs PyTorch (best threads)", [s.over_torch for s in speedups], width / 2))
    else:
        series = [(series[0][0], series[0][1], 0.0)]
    for name, values, offset in series:
        ax.bar(
            [p + offset for p in positions],
            [v if v else 0.0 for v in values],
            width,
            label=name,
        )
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}×"))
    ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_ylabel("speedup of fastrnn (× faster)")
    ax.set_title("fastrnn forward+backward speedup, ratio of medians")
    ax.set_xticks(list(positions))
    ax.set_xticklabels(labels, fontsize=7, rotation=45, ha="right")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def render(data: dict) -> tuple[str, list[Speedups]]:
    """The whole markdown report for a pytest-benchmark JSON document, and the speedups."""
    entries = load_entries(data)
    peak = blas_peak(entries)
    layer_lines, speedups = layer_section(entries, peak)
    sections = [
        ["# fastrnn benchmark report"],
        machine_section(data),
        peak_section(entries),
        layer_lines,
        efficiency_section(entries, peak),
        time_layer_section(entries),
        decode_section(entries),
        model_section(entries),
    ]
    if not entries:
        sections.append(["_No fastrnn benchmarks in this file (were they run disabled?)._"])
    return "\n\n".join("\n".join(s) for s in sections if s) + "\n", speedups


def main(argv=None) -> int:
    """Print the report; returns the exit status."""
    parser = argparse.ArgumentParser(
        description="Markdown ratio tables from a pytest-benchmark JSON of benchmarks/."
    )
    parser.add_argument("json", help="file written by --benchmark-json")
    parser.add_argument("--plot", metavar="PNG", help="also draw the speedups per shape")
    args = parser.parse_args(argv)
    try:
        with open(args.json, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        print(f"error: cannot read {args.json}: {err}", file=sys.stderr)
        return 2
    report, speedups = render(data)
    print(report, end="")
    if args.plot:
        if not speedups:
            print("error: no layer benchmarks to plot", file=sys.stderr)
            return 1
        try:
            plot_speedups(speedups, args.plot)
        except ImportError:
            print(
                "error: --plot needs matplotlib, which is not installed "
                "(pip install matplotlib, or pip install 'fastrnn[bench]'); "
                "the tables above are complete.",
                file=sys.stderr,
            )
            return 1
        print(f"\nPlot written to {args.plot}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
