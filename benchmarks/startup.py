"""Start-up cost: a new process's import of fastrnn and its first call, warm kernel cache.

A user who runs a script (a generation demo, a test, a notebook kernel) pays this every
time. Each sample is a fresh interpreter that imports NumPy, then fastrnn, builds a
stateful ``TimeLSTM`` (D = H = 650, float32) and runs one decoding step, ``forward`` at
N = 1, T = 1; it reports the three durations. Before the timed processes one untimed
process fills the kernel cache, so the samples load compiled kernels from disk, as every
run after a user's first one does.

Two settings, interleaved:

* ``without SciPy``: ``import scipy`` fails in the child, as on a machine where SciPy is not
  installed (fastrnn does not install it: only its fallback BLAS route needs it);
* ``with SciPy`` (when it is installed): Numba then imports ``scipy.linalg`` while it loads
  the first kernel.

Usage::

    python benchmarks/startup.py [--samples 7]

Prints a Markdown table of medians (and the spread) per setting.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import textwrap

#: Makes ``import scipy`` fail in the child, as on a machine without SciPy.
BLOCK_SCIPY = textwrap.dedent(
    """
    import importlib.abc, sys
    class _NoSciPy(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name == "scipy" or name.startswith("scipy."):
                raise ImportError("SciPy is not installed (blocked by benchmarks/startup.py)")
    sys.meta_path.insert(0, _NoSciPy())
    """
)

#: What each child times: import NumPy, import fastrnn, one decoding step.
CHILD = textwrap.dedent(
    """
    import json, time
    start = time.perf_counter()
    import numpy as np
    numpy_done = time.perf_counter()
    import fastrnn
    import_done = time.perf_counter()
    H = 650
    rng = np.random.default_rng(0)
    shapes = ((H, 4 * H), (H, 4 * H), (4 * H,))
    params = [(rng.standard_normal(s) / 30).astype(np.float32) for s in shapes]
    layer = fastrnn.TimeLSTM(*params, stateful=True)
    layer.forward(rng.standard_normal((1, 1, H)).astype(np.float32))
    call_done = time.perf_counter()
    print(json.dumps({
        "import numpy": numpy_done - start,
        "import fastrnn": import_done - numpy_done,
        "first call": call_done - import_done,
        "total": call_done - start,
        "scipy imported": "scipy" in __import__("sys").modules,
    }))
    """
)

PARTS = ("import numpy", "import fastrnn", "first call", "total")


def run_child(block_scipy: bool) -> dict:
    """One fresh interpreter's durations (seconds)."""
    code = (BLOCK_SCIPY if block_scipy else "") + CHILD
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=600
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def settings() -> list[tuple[str, bool]]:
    """(label, block SciPy) for each setting this machine can run."""
    found = [("without SciPy", True)]
    if importlib.util.find_spec("scipy") is not None:
        found.append(("with SciPy", False))
    return found


def measure(samples: int) -> dict[str, list[dict]]:
    """``samples`` timed processes per setting, interleaved, after one cache-filling run."""
    cases = settings()
    run_child(block_scipy=True)  # fills the kernel cache; not timed
    results: dict[str, list[dict]] = {label: [] for label, _ in cases}
    for _ in range(samples):
        for label, block in cases:
            results[label].append(run_child(block))
    return results


def table(results: dict[str, list[dict]]) -> str:
    """Markdown: median (min-max) seconds of each part per setting."""
    lines = [
        "| setting | " + " | ".join(PARTS) + " | SciPy imported |",
        "| --- | " + " | ".join("---:" for _ in PARTS) + " | --- |",
    ]
    for label, runs in results.items():
        cells = []
        for part in PARTS:
            values = [run[part] for run in runs]
            cells.append(f"{statistics.median(values):.2f} s ({min(values):.2f}-{max(values):.2f})")
        imported = "yes" if any(run["scipy imported"] for run in runs) else "no"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {imported} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=7, help="processes per setting")
    args = parser.parse_args(argv)
    results = measure(args.samples)
    samples = len(next(iter(results.values())))
    print(f"Medians (min-max) over {samples} fresh processes per setting, warm kernel cache:\n")
    print(table(results))


if __name__ == "__main__":
    main()
