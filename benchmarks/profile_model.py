"""Where does a training step of one of the book's models spend its time?

Usage
-----
::

    python benchmarks/profile_model.py betterrnnlm                 # reference layers
    python benchmarks/profile_model.py betterrnnlm recurrent --steps 10
    python benchmarks/profile_model.py attention fastrnn --blas-threads 1
    python -m cProfile -s cumtime benchmarks/profile_model.py rnnlm recurrent --loop 5
    py-spy record -o rnnlm.svg -- python benchmarks/profile_model.py rnnlm fastrnn --loop 10
    python benchmarks/profile_model.py rnnlm fastrnn --loop 5 --generate

The positional arguments are the model (``rnnlm``, ``betterrnnlm``, ``seq2seq``, ``peeky``,
``attention``, or the class names) and the layer set (``reference``, the default,
``recurrent`` or ``fastrnn``; see :func:`book_models.layer_set`).

The breakdown
-------------
One warm-up step, then ``--steps`` training steps (:meth:`book_models.Trainer.step`, the
book's sizes, random ids) with every layer's ``forward`` and ``backward`` and the trainer's
``remove_duplicate``, ``clip_grads`` and optimizer update timed where they run
(:func:`book_models.profile_steps`). Every line is the median over the steps; "model
(between layers)" is the step's time minus all the timed parts: the model's own
concatenations, slices and Python. A second table sums the lines per layer class.

``--loop SECONDS`` only runs training steps (or, with ``--generate``, ``generate`` calls)
for that long, for cProfile or py-spy.
"""

from __future__ import annotations

import argparse
import contextlib
import sys

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

from fastrnn._cli import (
    ForeignLoad,
    call_for,
    format_machine_info,
    format_ms,
    format_table,
    limit_blas_threads,
    machine_info,
)


def format_breakdown(b: StepBreakdown) -> str:
    """The per-layer table and the per-class summary, plain text."""

    def ms(seconds):
        return "" if seconds is None else format_ms(seconds)

    rows = [
        [
            p.name,
            p.kind,
            ms(p.forward),
            ms(p.backward),
            ms(p.other),
            format_ms(p.seconds),
            f"{100 * p.seconds / b.total:.1f}%",
        ]
        for p in b.parts
    ]
    accounted = sum(p.seconds for p in b.parts)
    rows.append(["step (median)", "", "", "", "", format_ms(b.total), "100%"])
    lines = [
        format_table(
            ["part", "class", "forward ms", "backward ms", "other ms", "total ms", "share"],
            rows,
        ),
        "",
        f"sum of the lines: {format_ms(accounted)} ms (medians do not add up exactly)",
        "",
    ]
    kinds = sorted(b.by_kind().items(), key=lambda item: -item[1])
    lines.append(
        format_table(
            ["by class / part", "ms", "share"],
            [[k, format_ms(s), f"{100 * s / b.total:.1f}%"] for k, s in kinds],
            left=1,
        )
    )
    return "\n".join(lines)


def loop(name: str, variant: str, seconds: float, generate: bool) -> None:
    """Run training steps (or generate calls) of ``name`` with ``variant`` for ``seconds``."""
    layers = layer_set(variant)
    if generate:
        run = generation_runner(name, build_model(name, layers))
        what = f"generate calls ({MODELS[name].sample_size} ids each)"
    else:
        trainer = make_trainer(name, layers)
        xs, ts = make_batch(name)

        def run():
            trainer.step(xs, ts)

        what = "training steps"
    calls, elapsed = call_for(run, seconds)
    print(
        f"{name} on {variant}: {calls} {what} in {elapsed:.2f} s, "
        f"{1e3 * elapsed / max(calls, 1):.2f} ms per call"
    )


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser."""
    parser = argparse.ArgumentParser(
        description="Per-layer time breakdown of a training step of one of the book's models "
        "(see the module docstring), or a plain loop for cProfile and py-spy.",
    )
    parser.add_argument("model", help=f"one of {', '.join(MODELS)} (any case)")
    parser.add_argument(
        "variant",
        nargs="?",
        default="reference",
        choices=VARIANTS,
        help="layer set (default: reference)",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=5,
        metavar="N",
        help="profiled steps; each line is their median (default: 5)",
    )
    parser.add_argument(
        "--blas-threads",
        type=int,
        default=None,
        metavar="N",
        help="limit the BLAS libraries to N threads (needs threadpoolctl)",
    )
    parser.add_argument(
        "--loop",
        type=float,
        default=None,
        metavar="SECONDS",
        help="only run training steps repeatedly for SECONDS, for cProfile or py-spy",
    )
    parser.add_argument(
        "--generate",
        action="store_true",
        help="with --loop: run the model's generate() instead of training steps",
    )
    return parser


def main(argv=None) -> int:
    """Run the profiler; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        name = model_name(args.model)
        if args.steps < 1:
            raise ValueError("--steps must be at least 1")
        layer_set(args.variant)
    except (ValueError, LayerSetUnavailable) as err:
        parser.error(str(err))
    if args.generate and args.loop is None:
        parser.error("--generate goes with --loop")
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(limit_blas_threads(args.blas_threads))
        except RuntimeError as err:
            parser.error(str(err))
        if args.loop is not None:
            loop(name, args.variant, args.loop, args.generate)
            return 0
        for line in format_machine_info(machine_info()):
            print(line)
        print(
            f"\n{MODELS[name].label} on the {args.variant!r} layer set: one training step, "
            f"median of {args.steps} steps per line\n",
            flush=True,
        )
        load = ForeignLoad().start()
        trainer = make_trainer(name, layer_set(args.variant))
        trainer.step(*make_batch(name))  # compile, allocate, first-touch
        print(format_breakdown(profile_steps(name, args.variant, trainer, args.steps)))
        other = load.cores()
        if other is not None:
            print(f"\nother processes kept {other:.2f} cores busy meanwhile", end="")
            print(" (a busy machine: rerun, or use --blas-threads 1)" if other > 0.25 else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
