"""The book's models end to end: training step and generation per layer set, interleaved.

Usage
-----
::

    python benchmarks/compare_models.py                       # every model, 10 rounds
    python benchmarks/compare_models.py --quick               # 3 rounds, 20 ids per generate
    python benchmarks/compare_models.py --models rnnlm betterrnnlm --rounds 20
    python benchmarks/compare_models.py --plot breakdown.png  # and where a step's time goes
    OPENBLAS_THREAD_TIMEOUT=4 python benchmarks/compare_models.py --blas-threads 1

Prints, in Markdown, the machine (CPU, cores, NumPy/Numba/PyTorch versions, the BLAS
libraries with their CPU architecture and threads), then one table: for each model of
:mod:`book_models` the median time of a training step and of generating one id, for each
implementation, and the ratios: each layer set against ``reference``, ``fastrnn`` against
PyTorch's best thread setting. With ``--breakdown`` or ``--plot``, also the time per step of
each layer class and trainer part, per layer set, and ``--plot FILE.png`` draws it as stacked
bars, one panel per model.

Implementations
---------------
``reference``, ``recurrent``, ``fastrnn``
    the layer sets of :func:`book_models.layer_set`: the book's NumPy layers; the same with
    fastrnn's recurrent layers; every layer from ``fastrnn.time_layers``. A set that does
    not exist yet is listed as not available.
``torch-1t``, ``torch-2t``
    Rnnlm and BetterRnnlm in PyTorch (:mod:`torch_models`), at 1 and 2 threads, from the
    same initial weights (``--no-torch`` leaves them out; without PyTorch they are skipped).

How the numbers are made
------------------------
* Every implementation of a model is built from the same seed, so they start from the same
  weights, and warmed up (two steps and one generation: kernel compilation, first-touch
  page faults). Then the rounds: each round times one call of every implementation, in an
  order rotated by one place per round, so that a slow drift of the machine (other load,
  clock speed) affects all of them alike. The table shows the medians over the rounds.
* A step is :meth:`book_models.Trainer.step`: forward, backward, ``remove_duplicate``,
  ``clip_grads`` and the optimizer's update on one batch of random ids, consecutive steps of
  one training run. In the ``recurrent`` set the book's NumPy layers run between fastrnn's
  calls, as in a user's loop; nothing is set apart.
* Generation is one ``generate`` call (batch 1, one step per layer call), divided by the ids
  it produced: ``--tokens`` sampled ids for the language models (the book samples 100), the
  book's answer length for the seq2seq models (4 for addition, 10 for dates), whose time
  includes encoding the question once, as in the book's ``eval_seq2seq``.
* Each timed sample is a burst of back-to-back calls lasting about ``--burst`` seconds (one
  call when a call takes longer), as in a training loop; the table divides by the calls.
* Before each timed sample the process sleeps ``--gap`` seconds, so that the worker threads of
  the implementation timed before (OpenBLAS's and PyTorch's OpenMP pools spin for a while
  after their last call, on the cores the next one needs) are idle, as they are in a loop
  that runs only one implementation.
* ``other load`` is the number of cores other processes kept busy meanwhile (Linux). With
  a multithreaded BLAS a busy core can make every product several times slower: rows above
  0.25 are marked and their times are not to be trusted. On a shared machine,
  ``--wait-quiet SECONDS`` waits before each model (at most that long) until other
  processes have left the cores idle for a few seconds.
* The breakdown (:func:`book_models.profile_steps`) times every layer's ``forward`` and
  ``backward`` inside real steps, and the trainer's parts; "model (between layers)" is the
  rest: the models' own concatenations, slices and Python.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from book_models import (
    MODELS,
    VARIANTS,
    LayerSetUnavailable,
    StepBreakdown,
    build_model,
    generation_runner,
    layer_set,
    make_batch,
    make_trainer,
    model_name,
    profile_steps,
)

from fastrnn import _planner
from fastrnn._cli import (
    BUSY_THRESHOLD,
    ForeignLoad,
    format_machine_info,
    limit_blas_threads,
    machine_info,
    torch_available,
    torch_threads,
)

#: Defaults: rounds, generated ids per language-model call, profiled steps.
ROUNDS, TOKENS, BREAKDOWN_STEPS = 10, 100, 5
QUICK_ROUNDS, QUICK_TOKENS, QUICK_BREAKDOWN_STEPS = 3, 20, 3
GAP_SECONDS = 0.2
BURST_SECONDS = 0.1
BUSY_MARK = " ⚠"


@dataclass
class Contender:
    """One implementation of one model, ready to time."""

    impl: str
    step: Callable[[], object]
    generate: Callable[[], list]
    tokens: int  # ids one generate call produces
    threads: int | None = None  # PyTorch's thread count, None for the NumPy layer sets
    calls: dict[str, int] = field(default_factory=lambda: {"step": 1, "generate": 1})

    def context(self):
        return torch_threads(self.threads) if self.threads else contextlib.nullcontext()


@dataclass
class ModelResult:
    """Medians (seconds per step, per generated id) of every implementation of a model."""

    model: str
    step: dict[str, float] = field(default_factory=dict)
    generate: dict[str, float] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    foreign_load: float | None = None
    breakdowns: list[StepBreakdown] = field(default_factory=list)


def build_contenders(
    name: str, torch_thread_counts: Sequence[int], tokens: int
) -> tuple[list[Contender], dict[str, str]]:
    """The implementations of model ``name`` to compare, and the unavailable ones with why."""
    spec = MODELS[name]
    xs, ts = make_batch(name)
    n_tokens = spec.sample_size if spec.seq2seq else tokens
    contenders, unavailable = [], {}
    for variant in VARIANTS:
        try:
            layers = layer_set(variant)
        except LayerSetUnavailable as err:
            unavailable[variant] = str(err)
            continue
        trainer = make_trainer(name, layers)
        generate = generation_runner(name, build_model(name, layers), n_tokens)
        contenders.append(Contender(variant, lambda t=trainer: t.step(xs, ts), generate, n_tokens))
    if spec.torch and torch_thread_counts:
        import torch_models

        reference = layer_set("reference")
        trainer = torch_models.make_torch_trainer(name, build_model(name, reference))
        generator = torch_models.make_torch_trainer(name, build_model(name, reference))
        txs, tts = torch_models.torch_batch(xs, ts)
        start_id = int(ts[0, 0])
        for threads in torch_thread_counts:
            contenders.append(
                Contender(
                    f"torch-{threads}t",
                    lambda: trainer.step(txs, tts),
                    lambda: generator.generate(start_id, sample_size=n_tokens + 1)[1:],
                    n_tokens,
                    threads,
                )
            )
    return contenders, unavailable


def calls_per_burst(seconds_per_call: float, burst: float) -> int:
    """How many back-to-back calls fill ``burst`` seconds (at least one)."""
    return max(1, round(burst / max(seconds_per_call, 1e-9)))


def interleaved_medians(
    contenders: list[Contender], phase: str, rounds: int, gap: float
) -> dict[str, float]:
    """Median seconds per call (``phase="step"``) or per generated id (``"generate"``).

    Each sample is a burst of ``c.calls[phase]`` back-to-back calls after the gap, as in a
    training loop, so that waking the thread pools after the gap is not charged to a single
    short step.
    """
    times: dict[str, list[float]] = {c.impl: [] for c in contenders}
    for r in range(rounds):
        k = r % len(contenders)
        for c in contenders[k:] + contenders[:k]:
            run = c.step if phase == "step" else c.generate
            calls = c.calls[phase]
            per = calls * (1 if phase == "step" else c.tokens)
            with c.context():
                time.sleep(gap)
                t0 = time.perf_counter()
                for _ in range(calls):
                    run()
                elapsed = time.perf_counter() - t0
            times[c.impl].append(elapsed / per)
    return {impl: statistics.median(values) for impl, values in times.items()}


def wait_until_quiet(max_seconds: float, window: float = 2.0, windows: int = 2) -> float:
    """Wait until other processes use under :data:`BUSY_THRESHOLD` cores for ``windows``
    consecutive ``window``-second windows, or ``max_seconds`` have passed; returns the wait."""
    started = time.perf_counter()
    quiet = 0
    while quiet < windows and time.perf_counter() - started < max_seconds:
        load = ForeignLoad().start()
        time.sleep(window)
        other = load.cores()
        if other is None:
            break  # not measurable here (not Linux)
        quiet = quiet + 1 if other < BUSY_THRESHOLD else 0
    return time.perf_counter() - started


def measure_model(
    name: str,
    rounds: int,
    tokens: int,
    gap: float,
    torch_thread_counts: Sequence[int],
    breakdown_steps: int,
    burst: float = BURST_SECONDS,
) -> ModelResult:
    """Build, warm up and time every implementation of ``name``; optionally the breakdown."""
    load = ForeignLoad().start()
    contenders, unavailable = build_contenders(name, torch_thread_counts, tokens)
    result = ModelResult(name, unavailable=unavailable)
    if not contenders:
        return result
    for c in contenders:
        with c.context():
            c.step()
            c.generate()
            for phase, run in (("step", c.step), ("generate", c.generate)):
                t0 = time.perf_counter()
                run()
                c.calls[phase] = calls_per_burst(time.perf_counter() - t0, burst)
    result.step = interleaved_medians(contenders, "step", rounds, gap)
    result.generate = interleaved_medians(contenders, "generate", rounds, gap)
    del contenders  # free the models before the breakdown builds its own
    if breakdown_steps:
        for variant in VARIANTS:
            if variant in unavailable:
                continue
            trainer = make_trainer(name, layer_set(variant))
            trainer.step(*make_batch(name))  # warm-up
            time.sleep(gap)
            result.breakdowns.append(profile_steps(name, variant, trainer, breakdown_steps))
    result.foreign_load = load.cores()
    return result


# --------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------


def format_time(seconds: float | None) -> str:
    """ms with three significant digits (µs below 0.1 ms); ``–`` when missing."""
    if seconds is None:
        return "–"
    if seconds < 1e-4:
        return f"{seconds * 1e6:.3g} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds:.3g} s"


def format_ratio(numerator: float | None, denominator: float | None) -> str:
    if not numerator or not denominator:
        return "–"
    return f"{numerator / denominator:.2f}×"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]], left: int = 2) -> str:
    """A Markdown table; the first ``left`` columns left-aligned, the others right."""
    align = ["---" if i < left else "---:" for i in range(len(headers))]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def machine_lines(blas_limit: int | None) -> list[str]:
    """The machine, as Markdown list items."""
    lines = ["## Machine", ""]
    lines += [f"- {line}" for line in format_machine_info(machine_info())]
    settings = [f"OPENBLAS_THREAD_TIMEOUT={os.environ.get('OPENBLAS_THREAD_TIMEOUT', 'unset')}"]
    if blas_limit is not None:
        settings.append(f"--blas-threads {blas_limit}")
    lines.append(f"- Settings: {', '.join(settings)}")
    return lines


_CELLS = {1: "RNN", 3: "GRU", 4: "LSTM"}


def planner_line(plans: dict) -> str | None:
    """The routes the planner chose for the per-step products (``fastrnn._planner.plans()``),
    one item per layer shape that was timed or pinned, or None when there is none."""
    items = []
    for (gates, N, T, H, dtype), chosen in sorted(plans.items()):
        if chosen.source in ("batch of one", "empty"):
            continue
        cell = _CELLS.get(gates, f"{gates} gates")
        items.append(
            f"{cell} N={N} T={T} H={H} {np.dtype(dtype).name}: "
            f"{chosen.forward}/{chosen.backward} ({chosen.source})"
        )
    if not items:
        return None
    return "Planner routes (forward/backward per-step products): " + "; ".join(items) + "."


def results_table(results: list[ModelResult], impls: list[str]) -> str:
    """One row per model and phase: medians, then the ratios."""
    headers = ["model", "per", *impls]
    ratio_impls = [v for v in VARIANTS if v != "reference" and v in impls]
    headers += [f"{v} vs reference" for v in ratio_impls]
    torch_impls = [i for i in impls if i.startswith("torch-")]
    if torch_impls:
        headers.append("fastrnn vs torch")
    rows = []
    for result in results:
        busy = result.foreign_load is not None and result.foreign_load > BUSY_THRESHOLD
        for phase, medians in (("step", result.step), ("generated id", result.generate)):
            label = MODELS[result.model].label + (BUSY_MARK if busy else "")
            row = [label, phase]
            for impl in impls:
                if impl in medians:
                    row.append(format_time(medians[impl]))
                elif impl in result.unavailable:
                    row.append("n/a")
                else:
                    row.append("–")
            ref = medians.get("reference")
            row += [format_ratio(ref, medians.get(v)) for v in ratio_impls]
            if torch_impls:
                best_torch = min((medians[i] for i in torch_impls if i in medians), default=None)
                row.append(format_ratio(best_torch, medians.get("fastrnn")))
            rows.append(row)
    return markdown_table(headers, rows)


def breakdown_table(result: ModelResult) -> str:
    """Milliseconds per step of each layer class and trainer part, per layer set."""
    kinds: list[str] = []
    for b in result.breakdowns:
        kinds += [k for k in b.by_kind() if k not in kinds]
    headers = ["part", *[b.variant for b in result.breakdowns]]
    rows = []
    for kind in kinds:
        cells = []
        for b in result.breakdowns:
            seconds = b.by_kind().get(kind)
            share = f" ({100 * seconds / b.total:.0f}%)" if seconds is not None else ""
            cells.append(format_time(seconds) + share)
        rows.append([kind, *cells])
    rows.append(["**step (median)**", *[f"**{format_time(b.total)}**" for b in result.breakdowns]])
    return markdown_table(headers, rows, left=1)


def plot_breakdowns(results: list[ModelResult], path: str) -> None:
    """Stacked bars of the step breakdown, one panel per model (needs matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = [r for r in results if r.breakdowns]
    if not results:
        raise ValueError("no step breakdown was measured")
    kinds: list[str] = []
    for r in results:
        for b in r.breakdowns:
            kinds += [k for k in b.by_kind() if k not in kinds]
    colors = dict(zip(kinds, plt.get_cmap("tab10").colors, strict=False))
    fig, axes = plt.subplots(
        1, len(results), figsize=(max(8.0, 2.6 * len(results) + 1.5), 5.6), squeeze=False
    )
    for ax, r in zip(axes[0], results, strict=True):
        positions = range(len(r.breakdowns))
        bottoms = [0.0] * len(r.breakdowns)
        for kind in kinds:
            heights = [1e3 * b.by_kind().get(kind, 0.0) for b in r.breakdowns]
            ax.bar(positions, heights, 0.65, bottom=bottoms, color=colors[kind], label=kind)
            bottoms = [b + h for b, h in zip(bottoms, heights, strict=True)]
        for x, b in zip(positions, r.breakdowns, strict=True):
            # the measured step median, which the stacked medians approximate
            ax.annotate(format_time(b.total), (x, bottoms[x]), ha="center", va="bottom", fontsize=7)
        ax.margins(y=0.08)
        ax.set_xticks(list(positions), [b.variant for b in r.breakdowns], fontsize=8)
        busy = r.foreign_load is not None and r.foreign_load > BUSY_THRESHOLD
        ax.set_title(
            r.model + (f"\n(busy machine: {r.foreign_load:.1f} cores)" if busy else ""), fontsize=9
        )
        ax.tick_params(axis="y", labelsize=8)
    axes[0][0].set_ylabel("ms per training step (median)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=5, fontsize=8, frameon=False)
    fig.suptitle("Where a training step's time goes, per layer set")
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------


def _model_arg(text: str) -> str:
    try:
        return model_name(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser."""
    parser = argparse.ArgumentParser(
        description="Time a training step and generation of the book's models with every "
        "layer set (and PyTorch), interleaved in one process; print Markdown ratio tables.",
    )
    parser.add_argument(
        "--models",
        nargs="+",
        type=_model_arg,
        default=list(MODELS),
        metavar="MODEL",
        help=f"models to run (default: all): {', '.join(MODELS)} (any case)",
    )
    parser.add_argument(
        "--rounds", type=_positive_int, default=None, help=f"timed rounds (default: {ROUNDS})"
    )
    parser.add_argument(
        "--tokens",
        type=_positive_int,
        default=None,
        help=f"ids a language model generates per timed call (default: {TOKENS})",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK_ROUNDS} rounds, {QUICK_TOKENS} ids, {QUICK_BREAKDOWN_STEPS} profiled "
        "steps (explicit options still win)",
    )
    parser.add_argument(
        "--breakdown", action="store_true", help="also print where a step's time goes"
    )
    parser.add_argument(
        "--breakdown-steps",
        type=_positive_int,
        default=None,
        metavar="N",
        help=f"steps profiled per layer set (default: {BREAKDOWN_STEPS})",
    )
    parser.add_argument(
        "--plot", metavar="FILE.png", help="draw the breakdown as stacked bars (implies it)"
    )
    parser.add_argument("--no-torch", action="store_true", help="leave PyTorch out")
    parser.add_argument(
        "--torch-threads",
        nargs="+",
        type=_positive_int,
        default=[1, 2],
        metavar="N",
        help="PyTorch thread counts, one column each (default: 1 2)",
    )
    parser.add_argument(
        "--gap",
        type=float,
        default=GAP_SECONDS,
        metavar="SECONDS",
        help=f"idle time before each timed call (default: {GAP_SECONDS})",
    )
    parser.add_argument(
        "--burst",
        type=float,
        default=BURST_SECONDS,
        metavar="SECONDS",
        help="each timed sample runs back-to-back calls for about this long "
        f"(default: {BURST_SECONDS}; 0 times single calls)",
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each model, wait up to SECONDS for other processes to leave the cores "
        "idle (default: 0, do not wait)",
    )
    parser.add_argument(
        "--blas-threads",
        type=_positive_int,
        default=None,
        metavar="N",
        help="limit NumPy's BLAS (which fastrnn also calls) to N threads",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparison; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    rounds = args.rounds or (QUICK_ROUNDS if args.quick else ROUNDS)
    tokens = args.tokens or (QUICK_TOKENS if args.quick else TOKENS)
    steps = args.breakdown_steps or (QUICK_BREAKDOWN_STEPS if args.quick else BREAKDOWN_STEPS)
    if not (args.breakdown or args.plot):
        steps = 0
    torch_counts: list[int] = []
    if not args.no_torch:
        if torch_available():
            torch_counts = list(args.torch_threads)
        else:
            print("note: PyTorch is not installed; its columns are left out", file=sys.stderr)
    impls = [*VARIANTS, *[f"torch-{n}t" for n in torch_counts]]

    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(limit_blas_threads(args.blas_threads))
        except RuntimeError as err:
            parser.error(str(err))
        try:
            layer_set("reference")
        except LayerSetUnavailable as err:
            parser.exit(1, f"error: nothing to compare against: {err}\n")
        started = time.perf_counter()
        results = []
        for name in args.models:
            if args.wait_quiet > 0:
                waited = wait_until_quiet(args.wait_quiet)
                print(f"{name}: waited {waited:.0f} s for a quiet machine", file=sys.stderr)
            print(f"{name}: measuring ...", file=sys.stderr, flush=True)
            results.append(
                measure_model(name, rounds, tokens, args.gap, torch_counts, steps, args.burst)
            )
        elapsed = time.perf_counter() - started
        machine = machine_lines(args.blas_threads)  # after torch's libraries are loaded

    print("# The book's models: training step and generation\n")
    print("\n".join(machine))
    burst = f", each a {args.burst:g} s burst of back-to-back calls" if args.burst else ""
    print(f"\n## Medians over {rounds} interleaved rounds{burst}\n")
    print(results_table(results, impls))
    print(
        "\n_vs reference_: reference median / median (> 1: faster). _fastrnn vs torch_: "
        "PyTorch's best thread setting / fastrnn. Generation is per id: "
        f"{tokens} sampled per call for the language models, the book's answer length "
        "(encoder pass included) for the seq2seq models."
    )
    unavailable = {v: why for r in results for v, why in r.unavailable.items()}
    for variant, why in unavailable.items():
        print(f"\n_{variant}: n/a_, {why}.")
    if any(r.foreign_load is not None and r.foreign_load > BUSY_THRESHOLD for r in results):
        print(
            f"\n{BUSY_MARK.strip()} other processes kept more than {BUSY_THRESHOLD} of a core "
            "busy while this model was measured; its times can be several times too slow."
        )
    loads = [f"{r.model} {r.foreign_load:.2f}" for r in results if r.foreign_load is not None]
    if loads:
        print(f"\nOther load (cores): {', '.join(loads)}. Total run time {elapsed:.0f} s.")
    routes = planner_line(_planner.plans())
    if routes:
        print(f"\n{routes}")
    if steps:
        print(f"\n## Where a training step's time goes (median of {steps} profiled steps)")
        for r in results:
            if r.breakdowns:
                print(f"\n### {MODELS[r.model].label}\n")
                print(breakdown_table(r))
    if args.plot:
        try:
            plot_breakdowns(results, args.plot)
        except ImportError:
            print("error: --plot needs matplotlib (pip install matplotlib)", file=sys.stderr)
            return 1
        except ValueError as err:
            print(f"error: nothing to plot: {err}", file=sys.stderr)
            return 1
        print(f"\nPlot written to {args.plot}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
