"""Which BLAS orientation the per-step recurrent products use, chosen on the machine that runs.

The recurrent layers make two small products per time step: ``h @ Wh`` (forward) and
``dA @ Wh.T`` (backward). BLAS libraries run them at very different speeds depending on
their orientation, the shape, the library's build and the CPU: measured on three machines,
the best choice moved between them. So, as FFTW's planner and cuDNN's benchmark mode do,
the first time a layer meets a (gates, batch, hidden size, dtype) combination the candidates
are timed on this machine, and the fastest is kept (timed once more a few seconds later, below):

* forward: ``direct`` (``A += h @ Wh``), ``transposed`` (``(Wh.T @ h.T).T`` against a
  contiguous copy of ``Wh.T``, made on every call so that in-place updates are seen) or
  ``packed`` (fastrnn's own tiles against ``Wh`` packed into panels on every call, on the
  BLAS library's threads: :mod:`fastrnn._tiles`);
* backward: ``direct`` (``dA @ Wh.T``), ``scratch`` (``(Wh @ dA.T).T`` through an (H, N)
  scratch), ``transposed`` (``dA @ WT`` against a contiguous copy ``WT`` of ``Wh.T``) or
  ``packed`` (``Wh.T`` packed).

A route that needs a copy of ``Wh.T`` or the panels pays for it once per call, so the
choice for a sequence of ``T`` steps weighs ``T`` products against one copy. A GRU step
makes two products, with ``Wh[:, :2H]`` and with ``Wh[:, 2H:]``, and is timed so. Timing a
combination costs a few tens of milliseconds (each candidate repeated for about 1 ms, five
interleaved rounds, the fastest round kept, which is robust to a moment of load from
elsewhere).

The first timing usually falls in a model's first training step, right after compilation,
first allocations and whatever the program did before, when products can run 1.5-2x slower
for a second or so, and not all candidates alike. So the planner takes one second look
:data:`SECOND_LOOK_SECONDS` later, at the next layer call: it times the candidates again,
keeps the faster time of the two per candidate, and chooses again. A route can therefore
change once per shape, a few seconds into a process (and with it the last bits of the
results); pinning (below) avoids both timings.

A batch of one always runs ``direct``: the products are matrix-vector products then.

``FASTRNN_PLAN``, read at import, pins the choice: ``static`` uses fixed rules measured on
one machine (no timing); ``forward=transposed,backward=scratch`` (either part may be left
out, and ``auto`` means measured) fixes one or both directions; :func:`pin` does the same
at run time. :func:`plans` lists what was chosen, for ``python -m fastrnn bench``.
"""

from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import dataclass

import numpy as np

from . import _kernels as kernels
from . import _tiles as tiles

__all__ = [
    "Plan",
    "PLAN_VARIABLE",
    "SECOND_LOOK_SECONDS",
    "forget",
    "generation",
    "pin",
    "plan",
    "plans",
]

PLAN_VARIABLE = "FASTRNN_PLAN"
FORWARD_ROUTES = ("direct", "transposed", "packed")
BACKWARD_ROUTES = ("direct", "scratch", "transposed", "packed")
_BACKPROP_CODES = {
    "direct": kernels.BACKPROP_DIRECT,
    "scratch": kernels.BACKPROP_VIA_SCRATCH,
    "transposed": kernels.BACKPROP_VIA_WT,
    "packed": kernels.BACKPROP_DIRECT,  # unused: the kernels go by the panels
}


@dataclass(frozen=True)
class Plan:
    """The routes of one layer shape.

    Attributes
    ----------
    forward : str
        One of :data:`FORWARD_ROUTES`.
    backward : str
        One of :data:`BACKWARD_ROUTES`.
    source : str
        ``"measured"`` (``"measured twice"`` after the second look), ``"static"``,
        ``"pinned"``, ``"pinned+measured"`` (``"pinned+measured twice"``), ``"batch of
        one"`` or ``"empty"``.
    """

    forward: str
    backward: str
    source: str = "measured"

    @property
    def forward_transposes(self) -> bool:
        """Whether the forward kernels get a contiguous copy of ``Wh.T``."""
        return self.forward == "transposed"

    @property
    def backward_transposes(self) -> bool:
        """Whether the backward kernels get a contiguous copy of ``Wh.T``."""
        return self.backward == "transposed"

    @property
    def forward_packs(self) -> bool:
        """Whether the forward products run packed (for layers that can pack)."""
        return self.forward == "packed"

    @property
    def backward_packs(self) -> bool:
        """Whether the backward products run packed (for layers that can pack)."""
        return self.backward == "packed"

    @property
    def backward_code(self) -> int:
        """The ``route`` argument of the backward kernels."""
        return _BACKPROP_CODES[self.backward]

    def describe(self) -> str:
        return f"fwd {self.forward}, bwd {self.backward} ({self.source})"


def _parse_pins(text: str) -> tuple[bool, dict[str, str]]:
    """``FASTRNN_PLAN`` -> (static, {direction: route}); raises ValueError naming it."""
    text = text.strip().lower()
    if text in ("", "auto"):
        return False, {}
    if text == "static":
        return True, {}
    pins = {}
    allowed = {"forward": FORWARD_ROUTES, "backward": BACKWARD_ROUTES}
    for part in text.split(","):
        direction, _, route = part.partition("=")
        direction, route = direction.strip(), route.strip()
        if direction not in allowed or route not in (*allowed[direction], "auto"):
            raise ValueError(
                f"{PLAN_VARIABLE} must be 'auto', 'static' or a list like "
                f"'forward=transposed,backward=scratch' (forward: {', '.join(FORWARD_ROUTES)}; "
                f"backward: {', '.join(BACKWARD_ROUTES)}; either may be 'auto'), got {text!r}"
            )
        if route != "auto":
            pins[direction] = route
    return False, pins


# --------------------------------------------------------------------------------------
# Fixed rules: measured once, with OpenBLAS 0.3.30 on a 2-core Intel Xeon (AVX-512)
# --------------------------------------------------------------------------------------


def static_plan(gates: int, N: int, T: int, H: int) -> Plan:
    """The rules that held on the machine they were measured on (see the comments)."""
    # Forward: the transposed product is 1.25-1.35x faster for H = 650 and N = 10..32, but
    # 0.4-0.9x for H <= 256 or N >= 64; the copy of Wh.T pays off from about T = 8.
    forward = "transposed" if 2 <= N <= 48 and H >= 512 and T >= 8 else "direct"
    # Backward: against a contiguous Wh.T for small weights and batches of 8-24 (1.1-2x),
    # through the (H, N) scratch for batches of 16-64 (1.3-1.8x), else as it is.
    if 8 <= N <= 24 and gates * H * H <= 40_000 and T >= 8:
        backward = "transposed"
    elif 16 <= N <= 64:
        backward = "scratch"
    else:
        backward = "direct"
    return Plan(forward, backward, "static")


# --------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------

#: Seconds each candidate's timed round should last, and rounds per candidate. Three rounds
#: of one 0.5 ms product were too few at 20x650 (BetterRnnlm; AMD EPYC Zen 4): in 5 of 9
#: profiling processes the planner picked an unpacked backward route, whose products then
#: took 18.8-25 ms per call against 11.2-13.9 packed; 1 of 8 with these settings.
_ROUND_SECONDS = 1e-3
_ROUNDS = 5

#: Seconds from a shape's first timing to the planner's second look. Timed inside the first
#: training step of AttentionSeq2seq (N = 128, H = 256), right after a step of the book's
#: model, the candidates took 1.5-2x as long as in a quiet process and came out in another
#: order; five processes chose four different route pairs, whose steps differed by up to 16%
#: (AMD EPYC Zen 4). Products ran slow for about 1.3 s after such a step.
SECOND_LOOK_SECONDS = 3.0

# The planner's clock (replaced in the tests).
_now = time.monotonic


@dataclass(frozen=True)
class StepTimes:
    """Seconds per product of every candidate, of one copy of ``Wh.T``, and of packing
    ``Wh`` (``pack[0]``) and ``Wh.T`` (``pack[1]``) into panels (inf where not measured:
    a route that is left out of ``forward`` or ``backward`` does not compete)."""

    forward: dict
    backward: dict
    copy: float
    pack: tuple = (math.inf, math.inf)


def _time_candidates(candidates: dict) -> dict:
    """Fastest of ``_ROUNDS`` interleaved rounds per candidate, in seconds per repetition.

    ``candidates`` maps a name to ``run(reps)``.
    """
    reps = {}
    for name, run in candidates.items():
        run(1)  # compiles or loads the timing kernel, warms the caches
        start = time.perf_counter()
        run(1)
        once = max(time.perf_counter() - start, 1e-7)
        reps[name] = max(1, min(1000, math.ceil(_ROUND_SECONDS / once)))
    best = dict.fromkeys(candidates, math.inf)
    for _ in range(_ROUNDS):
        for name, run in candidates.items():
            start = time.perf_counter()
            run(reps[name])
            best[name] = min(best[name], (time.perf_counter() - start) / reps[name])
    return best


def measure(gates: int, N: int, H: int, dtype) -> StepTimes:
    """Time every candidate product for ``N`` rows, hidden size ``H``, ``gates`` blocks."""
    dtype = np.dtype(dtype)
    G = gates * H
    rng = np.random.default_rng(0)
    W = (rng.standard_normal((H, G)) / math.sqrt(H)).astype(dtype)
    WT = np.ascontiguousarray(W.T)
    no_WT = np.empty((0, H), dtype)
    h = rng.standard_normal((N, H)).astype(dtype)
    A = np.zeros((N, G), dtype)
    scratchT = np.empty((G, N), dtype)
    dA = rng.standard_normal((N, G)).astype(dtype)
    dh = np.zeros((N, H), dtype)  # the GRU accumulates into it
    dhT = np.empty((H, N), dtype)
    pool = tiles.thread_pool(dtype)
    unpacked = np.empty((0, H, tiles.PANEL), dtype)
    # A GRU step makes two products, with W[:, :2H] and W[:, 2H:]; they are timed as its
    # kernels run them (two calls, panels packed apart), the other cells' one product as is.
    gru = gates == 3
    panels = np.empty((kernels.forward_panel_count(gates, H), H, tiles.PANEL), dtype)
    panelsT = np.empty((tiles.panel_count(H), G, tiles.PANEL), dtype)
    kernels.repeat_pack(1, panels, W, False, gru)
    kernels.repeat_pack(1, panelsT, W, True, gru)
    dhr = np.zeros((N, H), dtype)

    def forward_product(reps, WT_or_none, scratch, panels):
        if gru:
            kernels.repeat_gru_recurrent_products(reps, A, h, W, WT_or_none, scratch, panels, pool)
        else:
            kernels.repeat_recurrent_product(reps, A, h, W, WT_or_none, scratch, panels, pool)

    def backward_product(reps, WT_or_none, code, panels):
        if gru:
            kernels.repeat_gru_backprop_to_state(
                reps, dh, dhr, dhT, dA, W, WT_or_none, code, panels, pool
            )
        else:
            kernels.repeat_backprop_to_state(reps, dh, dhT, dA, W, WT_or_none, code, panels, pool)

    forward_candidates = {
        "direct": lambda r: forward_product(r, no_WT, scratchT[:0], unpacked),
        "transposed": lambda r: forward_product(r, WT, scratchT, unpacked),
        "packed": lambda r: forward_product(r, no_WT, scratchT[:0], panels),
    }
    backward_candidates = {
        route: (
            lambda r, code=code, weights=WT if route == "transposed" else no_WT: backward_product(
                r, weights, code, unpacked
            )
        )
        for route, code in _BACKPROP_CODES.items()
        if route != "packed"
    }
    backward_candidates["packed"] = lambda r: backward_product(
        r, no_WT, kernels.BACKPROP_DIRECT, panelsT
    )
    pack_times = _time_candidates(
        {
            "forward": lambda r: kernels.repeat_pack(r, panels, W, False, gru),
            "backward": lambda r: kernels.repeat_pack(r, panelsT, W, True, gru),
        }
    )
    pack_costs = (pack_times["forward"], pack_times["backward"])
    forward = _time_candidates(forward_candidates)
    backward = _time_candidates(backward_candidates)

    def copy(reps):
        for _ in range(reps):
            np.copyto(WT, W.T)

    copy_time = _time_candidates({"copy": copy})["copy"]
    return StepTimes(forward, backward, copy_time, pack_costs)


def fastest_of(first: StepTimes, second: StepTimes) -> StepTimes:
    """Per candidate (and per copy and packing), the faster of two timings: load from
    elsewhere only ever slows a timing down."""

    def faster(a: dict, b: dict) -> dict:
        return {route: min(a[route], b.get(route, math.inf)) for route in a}

    return StepTimes(
        faster(first.forward, second.forward),
        faster(first.backward, second.backward),
        min(first.copy, second.copy),
        tuple(min(a, b) for a, b in zip(first.pack, second.pack, strict=True)),
    )


#: The packed route's time per step is weighed this much heavier. Timed alone, its panels
#: stay in the caches and the BLAS library's workers stay awake, which a layer's steps,
#: with element-wise work between the products, do not keep up as well: where the packed
#: route measured within a few percent of the best other one, whole layers ran 5-18% slower
#: with it (TimeGRU at H = 100, TimeLSTM at 128x7x16x128; AMD EPYC Zen 3, OpenBLAS).
PACKED_HANDICAP = 1.1


def choose(times: StepTimes, T: int) -> tuple[str, str]:
    """The cheapest forward and backward route for ``T`` steps, a copy or packing counted
    once and packed steps weighed by :data:`PACKED_HANDICAP`; only the routes ``times``
    holds compete."""
    once = {"transposed": (times.copy, times.copy), "packed": times.pack}

    def cost(route, per_step, direction):
        weight = PACKED_HANDICAP if route == "packed" else 1.0
        return T * per_step * weight + once.get(route, (0.0, 0.0))[direction]

    forward = min(times.forward, key=lambda r: cost(r, times.forward[r], 0))
    backward = min(times.backward, key=lambda r: cost(r, times.backward[r], 1))
    return forward, backward


class _Planner:
    """Plans per (gates, N, T, H, dtype), timed per (gates, N, H, dtype): once when first
    met, once more :data:`SECOND_LOOK_SECONDS` later; thread-safe."""

    def __init__(self, pins: str):
        self._times: dict[tuple, StepTimes] = {}
        self._chosen: dict[tuple, Plan] = {}
        self._second_looks: dict[tuple, float] = {}  # timing key -> when it is due
        self._next_look = math.inf  # the earliest of them, read without the lock
        self._lock = threading.Lock()
        self.generation = 0  # counts route changes: plans made before are stale
        self.pin(pins)

    def pin(self, text: str) -> None:
        self._static, self._pins = _parse_pins(text)
        self._chosen.clear()
        self.generation += 1

    def plan(self, gates: int, N: int, T: int, H: int, dtype) -> Plan:
        key = (gates, N, T, H, np.dtype(dtype).str)
        found = self._chosen.get(key)
        if found is not None:
            return found
        static, pins = self._static, self._pins
        if N <= 1 or T == 0:
            chosen = Plan("direct", "direct", "batch of one" if N == 1 else "empty")
        elif static:
            chosen = static_plan(gates, N, T, H)
        elif len(pins) == 2:
            chosen = Plan(pins["forward"], pins["backward"], "pinned")
        else:
            # Under the lock, so that a second look cannot slip in between reading the
            # times and recording the choice (one thread times; the others wait for it).
            with self._lock:
                chosen = self._chosen.get(key)
                if chosen is None:
                    timing_key = key[:2] + key[3:]
                    times = self._step_times(timing_key)
                    twice = timing_key not in self._second_looks
                    chosen = self._chosen[key] = self._choose(key, times, twice)
            return chosen
        self._chosen[key] = chosen
        return chosen

    def _choose(self, key: tuple, times: StepTimes, twice: bool = False) -> Plan:
        forward, backward = choose(times, key[2])
        pins = self._pins
        source = "pinned+measured" if pins else "measured"
        return Plan(
            pins.get("forward", forward),
            pins.get("backward", backward),
            f"{source} twice" if twice else source,
        )

    def _step_times(self, timing_key: tuple) -> StepTimes:
        """The timing of (gates, N, H, dtype); the caller holds the lock."""
        times = self._times.get(timing_key)
        if times is None:
            gates, N, H, dtype = timing_key
            times = self._times[timing_key] = measure(gates, N, H, np.dtype(dtype))
            due = _now() + SECOND_LOOK_SECONDS
            self._second_looks[timing_key] = due
            self._next_look = min(self._next_look, due)
        return times

    def take_second_looks(self) -> None:
        """Time again the shapes whose second look is due, keep the faster time per
        candidate, and choose again; a changed route counts a new generation."""
        if _now() < self._next_look:
            return
        with self._lock:
            now = _now()
            due = [key for key, when in self._second_looks.items() if when <= now]
            if self._static or len(self._pins) == 2:  # pinned since: no timing is used
                for timing_key in due:
                    del self._second_looks[timing_key]
                due = []
            for timing_key in due:
                del self._second_looks[timing_key]  # never retried, even if timing fails
                gates, N, H, dtype = timing_key
                again = measure(gates, N, H, np.dtype(dtype))
                self._times[timing_key] = fastest_of(self._times[timing_key], again)
            looked = set(due)
            changed = False
            for key, old in list(self._chosen.items()):
                if key[:2] + key[3:] not in looked or "measured" not in old.source:
                    continue
                new = self._choose(key, self._times[key[:2] + key[3:]], twice=True)
                self._chosen[key] = new
                changed |= (new.forward, new.backward) != (old.forward, old.backward)
            if changed:
                self.generation += 1
            # Last: until now, callers of generation() wait here for the new plans.
            self._next_look = min(self._second_looks.values(), default=math.inf)

    def plans(self) -> dict:
        return dict(self._chosen)

    def forget(self) -> None:
        with self._lock:
            self._chosen.clear()
            self._times.clear()
            self._second_looks.clear()
            self._next_look = math.inf
            self.generation += 1


_PLANNER = _Planner(os.environ.get(PLAN_VARIABLE, ""))


def plan(gates: int, N: int, T: int, H: int, dtype) -> Plan:
    """The plan for a layer with ``gates`` gate blocks over ``N`` x ``T`` steps of size ``H``.

    Measured the first time (gates, N, H, dtype) is seen, unless pinned, and once more
    :data:`SECOND_LOOK_SECONDS` later (see :func:`generation`).
    """
    return _PLANNER.plan(gates, N, T, H, dtype)


def generation() -> int:
    """Changes whenever plans made so far may no longer hold (:func:`pin`, :func:`forget`,
    a route changed by a second look), so that callers that keep a plan know when to ask
    again. Layers call it on every forward: it is where a due second look is taken."""
    _PLANNER.take_second_looks()
    return _PLANNER.generation


def pin(text: str) -> None:
    """Pin routes as ``FASTRNN_PLAN`` does (``"auto"`` unpins); forgets the plans made."""
    _PLANNER.pin(text)


def plans() -> dict:
    """Every plan made so far: ``{(gates, N, T, H, dtype): Plan}``."""
    return _PLANNER.plans()


def forget() -> None:
    """Drop every plan and measurement (the next layer call plans afresh)."""
    _PLANNER.forget()
