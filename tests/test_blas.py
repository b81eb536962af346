"""One BLAS pool: fastrnn's kernels call the library NumPy itself loaded.

Checked here: which library is bound and that no second one is loaded; that a user's
thread setting (``threadpool_limits``, ``OPENBLAS_NUM_THREADS``) governs the kernels'
products; the fallback route through SciPy's BLAS, forced or when NumPy's library cannot
be found, with its one warning; and the symbol lookup itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from _support import TOLERANCE, make_params
from threadpoolctl import threadpool_info

import fastrnn
from fastrnn import _blas, reference


def _numpy_blas_file():
    """The BLAS file NumPy loaded, as threadpoolctl reports it."""
    import numpy.linalg  # noqa: F401

    files = [lib["filepath"] for lib in threadpool_info() if lib["user_api"] == "blas"]
    numpy_root = os.path.dirname(os.path.dirname(np.__file__))
    own = [f for f in files if f.startswith(os.path.join(numpy_root, "numpy"))]
    return (own or files)[0]


def test_kernels_call_numpys_own_blas():
    binding = _blas.BINDING
    assert binding.route == "numpy", binding
    assert binding.library == _numpy_blas_file()
    assert binding.api in ("openblas", "mkl")
    assert binding.int_bits in (32, 64)
    assert set(binding.symbols) == set(_blas.SYMBOLS.values())
    assert "NumPy's" in binding.describe()


def _run_child(code: str, **env_extra) -> dict:
    """Run ``code`` in a fresh interpreter; it fills ``result``, printed as JSON."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FASTRNN_", "OPENBLAS_N"))}
    env.update(env_extra)
    template = textwrap.dedent(
        """
        import json, warnings
        result = {{}}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
        {body}
        result["warnings"] = [[w.category.__name__, str(w.message)] for w in caught]
        print(json.dumps(result))
        """
    ).format(body=textwrap.indent(textwrap.dedent(code), "    "))
    proc = subprocess.run(
        [sys.executable, "-c", template], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


_LAYER_CHECK = """
import numpy as np
import fastrnn
from fastrnn import reference, _blas
rng = np.random.default_rng(1)
params = [(0.3 * rng.standard_normal(s)) for s in ((5, 16), (4, 16), (16,))]
xs = rng.standard_normal((3, 6, 5))
for dtype, tol in ((np.float64, 1e-9), (np.float32, 2e-4)):
    p = [a.astype(dtype) for a in params]
    fast, ref = fastrnn.TimeLSTM(*p), reference.TimeLSTM(*p)
    np.testing.assert_allclose(fast.forward(xs), ref.forward(xs.astype(dtype)), rtol=tol)
    np.testing.assert_allclose(fast.backward(xs[..., :4]), ref.backward(xs[..., :4]), rtol=tol)
from threadpoolctl import threadpool_info
result["route"] = _blas.BINDING.route
result["reason"] = _blas.BINDING.reason
result["library"] = _blas.BINDING.library
result["blas_files"] = [l["filepath"] for l in threadpool_info() if l["user_api"] == "blas"]
"""


def test_a_fresh_process_binds_numpys_blas_without_a_warning():
    result = _run_child(_LAYER_CHECK)
    assert result["route"] == "numpy"
    assert result["library"] == _numpy_blas_file()
    assert result["library"] in result["blas_files"]
    assert result["warnings"] == []


def test_forced_fallback_warns_once_and_still_gives_the_reference_numbers():
    result = _run_child(_LAYER_CHECK, FASTRNN_BLAS="scipy")
    assert (result["route"], result["reason"]) == ("scipy", "FASTRNN_BLAS=scipy")
    assert [w[0] for w in result["warnings"]] == ["RuntimeWarning"]
    message = result["warnings"][0][1]
    assert "SciPy's BLAS" in message and "two BLAS thread pools" in message
    assert "slower" in message and "OPENBLAS_NUM_THREADS=1" in message
    assert result["library"] is None


def test_fallback_when_numpys_blas_cannot_be_found():
    """No library reported (an unknown BLAS): the fallback route, named in the warning."""
    code = "import threadpoolctl\nthreadpoolctl.threadpool_info = lambda: []\n" + _LAYER_CHECK
    result = _run_child(code)
    assert result["route"] == "scipy"
    assert "found no BLAS library" in result["reason"]
    assert [w[0] for w in result["warnings"]] == ["RuntimeWarning"]
    assert "found no BLAS library" in result["warnings"][0][1]


# Makes ``import scipy`` fail in a child process, as on a machine without SciPy.
_WITHOUT_SCIPY = """
import sys, importlib.abc
class _NoSciPy(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "scipy" or name.startswith("scipy."):
            raise ImportError("SciPy is not installed (blocked by the test)")
sys.meta_path.insert(0, _NoSciPy())
"""


def test_the_default_route_needs_no_scipy():
    """SciPy is an optional extra: without it, the layers run and SciPy is never imported
    (Numba would otherwise import scipy.linalg when it loads the first kernel)."""
    code = _WITHOUT_SCIPY + _LAYER_CHECK + 'result["scipy_imported"] = "scipy" in sys.modules\n'
    result = _run_child(code)
    assert result["route"] == "numpy"
    assert result["scipy_imported"] is False
    assert result["warnings"] == []


def test_the_fallback_without_scipy_says_which_extra_to_install():
    proc = subprocess.run(
        [sys.executable, "-c", _WITHOUT_SCIPY + "import fastrnn"],
        env=dict(os.environ, FASTRNN_BLAS="scipy"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode != 0
    last_line = proc.stderr.strip().splitlines()[-1]
    assert last_line.startswith("ImportError: fastrnn: NumPy's BLAS cannot be used")
    assert "FASTRNN_BLAS=scipy" in last_line and "pip install 'fastrnn[scipy]'" in last_line


def test_unknown_route_is_refused():
    proc = subprocess.run(
        [sys.executable, "-c", "import fastrnn"],
        env=dict(os.environ, FASTRNN_BLAS="mkl-please"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode != 0
    assert "FASTRNN_BLAS must be 'numpy' or 'scipy'" in proc.stderr


# --------------------------------------------------------------------------------------
# Thread settings govern the kernels
# --------------------------------------------------------------------------------------

_THREAD_CPU = """
import os, threading, time
import numpy as np
import fastrnn

def cpu_ticks():
    ticks = {}
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        ticks[tid] = int(fields[11]) + int(fields[12])  # utime + stime
    return ticks

rng = np.random.default_rng(0)
H = 512
layer = fastrnn.TimeLSTM(*[(0.03 * rng.standard_normal(s)).astype(np.float32)
                           for s in ((H, 4 * H), (H, 4 * H), (4 * H,))])
xs = rng.standard_normal((64, 32, H)).astype(np.float32)
layer.forward(xs)

def measure():
    time.sleep(0.3)  # let OpenBLAS's idle workers stop spinning
    before = cpu_ticks()
    for _ in range(6):
        layer.forward(xs)
    after = cpu_ticks()
    me = str(threading.get_native_id())
    spent = {t: after[t] - before.get(t, 0) for t in after}
    return spent.pop(me), max(spent.values(), default=0)
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs Linux's /proc")
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores")
@pytest.mark.parametrize("plan", ["auto", "forward=packed"])
def test_threadpool_limits_governs_the_kernels(plan):
    """With NumPy's BLAS limited to one thread, no other thread works for fastrnn (SciPy's
    library, which Numba loads when SciPy is installed, keeps its threads and must stay
    idle); with two, a second thread does. Packed products (fastrnn's own code on the BLAS
    library's workers) follow the same setting."""
    if plan != "auto" and not _blas.BINDING.thread_dispatch:
        pytest.skip("packed products run on the calling thread with this BLAS")
    result = _run_child(
        _THREAD_CPU
        + """
from threadpoolctl import ThreadpoolController, threadpool_limits
from fastrnn._blas import BINDING
numpys = ThreadpoolController().select(filepath=BINDING.library)
assert len(numpys.lib_controllers) == 1
with numpys.limit(limits=1):
    result["one"] = measure()
with threadpool_limits(2, user_api="blas"):
    result["two"] = measure()
""",
        FASTRNN_PLAN=plan,
    )
    main, others = result["one"]
    assert main > 0 and others <= 0.05 * main, result
    main, others = result["two"]
    assert others >= 0.2 * main, result


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs Linux's /proc")
def test_openblas_num_threads_governs_the_kernels():
    if _blas.BINDING.api != "openblas":
        pytest.skip("OpenBLAS only")
    result = _run_child(_THREAD_CPU + 'result["one"] = measure()\n', OPENBLAS_NUM_THREADS="1")
    main, others = result["one"]
    assert main > 0 and others <= 0.05 * main, result


# --------------------------------------------------------------------------------------
# Symbol lookup
# --------------------------------------------------------------------------------------


class _FakeLibrary:
    """Stands in for a ctypes library: the named symbols exist, at made-up addresses."""

    def __init__(self, *names, config=b""):
        self._names = set(names)
        self._config = config

    def __getattr__(self, name):
        if name in self._names:
            return name
        raise AttributeError(name)


@pytest.fixture
def fake_addresses(monkeypatch):
    def address(dll, name):
        return 0x1000 if name in dll._names else None

    monkeypatch.setattr(_blas, "_symbol_address", address)
    monkeypatch.setattr(_blas, "_openblas_config_int_bits", lambda dll, p, s: 32)


@pytest.mark.parametrize(
    ("prefix", "suffix", "bits"),
    [("scipy_", "64_", 64), ("", "64_", 64), ("", "_64", 64), ("", "", 32)],
    ids=["numpy2-wheel", "numpy1-wheel", "underscore-64", "lp64-distribution"],
)
def test_openblas_affixes(fake_addresses, prefix, suffix, bits):
    names = [f"{prefix}cblas_{key}{suffix}" for key in _blas.SYMBOLS]
    found = _blas._find_openblas(_FakeLibrary(*names))
    assert found == (dict(zip(_blas.SYMBOLS, names, strict=True)), bits)


def test_openblas_with_a_missing_entry_point_is_not_bound(fake_addresses):
    names = [f"cblas_{key}64_" for key in ("sgemm", "dgemm", "sgemv")]  # no dgemv
    assert _blas._find_openblas(_FakeLibrary(*names)) is None


def test_mkl_prefers_the_explicit_ilp64_names(fake_addresses, monkeypatch):
    monkeypatch.delenv("MKL_INTERFACE_LAYER", raising=False)
    plain = [f"cblas_{key}" for key in _blas.SYMBOLS]
    explicit = [f"cblas_{key}_64" for key in _blas.SYMBOLS]
    assert _blas._find_mkl(_FakeLibrary(*plain, *explicit))[1] == 64
    assert _blas._find_mkl(_FakeLibrary(*plain)) == (
        dict(zip(_blas.SYMBOLS, plain, strict=True)),
        32,
    )
    monkeypatch.setenv("MKL_INTERFACE_LAYER", "ILP64")
    assert _blas._find_mkl(_FakeLibrary(*plain))[1] == 64


def test_real_library_symbols_resolve():
    """The symbols bound at import exist in NumPy's library under the recorded names."""
    import ctypes

    dll = ctypes.CDLL(_blas.BINDING.library)
    for theirs in _blas.BINDING.symbols.values():
        assert _blas._symbol_address(dll, theirs)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_products_through_the_binding_match_numpy(rng, dtype):
    """Every orientation and the batch-of-one (gemv) path of the kernels' gemm helper."""
    params = make_params(rng, "LSTM", 7, 5, dtype)
    for N in (1, 3):
        layer, ref = fastrnn.TimeLSTM(*params), reference.TimeLSTM(*params)
        xs = rng.standard_normal((N, 4, 7)).astype(dtype)
        np.testing.assert_allclose(layer.forward(xs), ref.forward(xs), **TOLERANCE[np.dtype(dtype)])
        dhs = rng.standard_normal((N, 4, 5)).astype(dtype)
        np.testing.assert_allclose(
            layer.backward(dhs), ref.backward(dhs), **TOLERANCE[np.dtype(dtype)]
        )
