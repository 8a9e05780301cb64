"""Classical reconstructions of exactly the k-space the networks see, scored by the same metrics.

Each baseline is a *reconstructor*: a function of an evaluation
:class:`~dagan_tf.data.batches.KSpaceBatch` (its ``kspace``, ``mask``, ``maps`` and ``zero_filled``)
returning the magnitude ``[B, H, W, 1]``.

* ``zero-filled-dc`` (the *projection*): N times ``x ← |F⁻¹((1−m)·F x + m·k₀)|``
  from the zero-filled magnitude — no network, no parameters.  It exploits that
  a real, non-negative image has conjugate-symmetric k-space, so in the
  ``magnitude`` regime it recovers much of what the mask left out; every
  ``eval --dc`` table shows it beside ``model+dc`` so no one credits a network
  with what the magnitude constraint does.
* ``sense``, ``tv`` and ``wavelet``: sigpy's ``SenseRecon`` (conjugate gradient,
  ℓ2 weight, 0 = plain SENSE), ``TotalVariationRecon`` and ``L1WaveletRecon``
  (Daubechies-4) on the same centred, orthonormal k-space, mask and coil maps
  (sigpy's centred FFT is the convention of :mod:`dagan_tf.kspace`; a test
  checks it), ``iterations`` iterations, regularisation weight ``lam``.  They
  need the ``cs`` extra (``pip install 'dagan-tf[cs]'``).  ``bart pics`` (the
  Debian ``bart`` package) is an optional backend for the same three.

:func:`tune_lambda` picks ``lam`` from a log grid by mean NMSE on validation slices; the choice is
cached in the prepared folder (``baseline_lambdas.json``) per method, solver, mask, regime and maps.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import tensorflow as tf

from dagan_tf import metrics
from dagan_tf.data.batches import KSpaceBatch, Reconstructor
from dagan_tf.errors import DaganError
from dagan_tf.models.network_io import apply_dc
from dagan_tf.scoped import restoring

SIGPY_BASELINES = ("sense", "tv", "wavelet")
BASELINES = ("zero-filled-dc",) + SIGPY_BASELINES
DEFAULT_LAMBDA = {"sense": 0.0, "tv": 1e-3, "wavelet": 1e-3}
SOLVERS = {"sense": "SenseRecon (conjugate gradient)", "tv": "TotalVariationRecon",
           "wavelet": "L1WaveletRecon db4"}
LAMBDA_GRID = tuple(10.0 ** e for e in range(-5, 1))  # 1e-5 … 1
PROJECTION_ITERATIONS = (1, 100)  # one step, and converged (PSNR changes < 0.01 dB after ~60 here)


def batch_arguments(batch: KSpaceBatch) -> tuple:
    """``(zero_filled, kspace, mask, maps or None)`` of an evaluation batch (single- or multi-coil)."""
    return batch.zero_filled, batch.kspace, batch.mask, batch.maps


def projection(iterations: int) -> Reconstructor:
    """The zero-filled + data-consistency baseline with ``iterations`` projections."""
    if iterations < 1:
        raise DaganError(f"projection iterations must be >= 1, got {iterations}")

    def run(zero_filled, kspace0, mask, maps):
        return tf.while_loop(lambda i, _: i < iterations, lambda i, x: (i + 1, apply_dc(x, kspace0, mask, maps)),
                             (tf.constant(0), zero_filled))[1]

    run = tf.function(run, reduce_retracing=True, autograph=False)  # no source needed at trace time

    return lambda batch: run(*batch_arguments(batch))


def _sigpy_app():
    try:
        import sigpy.mri.app as app
    except ImportError:
        raise DaganError("the sense, tv and wavelet baselines need sigpy: pip install 'dagan-tf[cs]'") from None
    return app


SIGPY_SEED = 0  # the seed of sigpy's step-size power iteration, the same for every slice


def _sigpy_slice(method: str, lam: float, iterations: int, kspace0, mask, maps) -> np.ndarray:
    """sigpy's reconstruction of one slice, a pure function of its arguments: its apps estimate their step
    size by a power iteration (``MaxEig``) from ``sigpy.util.randn``, which draws from numpy's *global* random
    state, so without a fixed seed the output depended on what had drawn random numbers before it."""
    app = _sigpy_app()
    recon = {"sense": app.SenseRecon, "tv": app.TotalVariationRecon, "wavelet": app.L1WaveletRecon}[method]
    with restoring(np.random.get_state, np.random.set_state):
        np.random.seed(SIGPY_SEED)
        return recon(kspace0, maps, lam, weights=mask, max_iter=iterations, show_pbar=False).run()


def _write_cfl(stem: Path, array: np.ndarray) -> None:
    """BART's format: ``stem.hdr`` (16 dimensions) and ``stem.cfl`` (complex64, column-major)."""
    dims = list(array.shape) + [1] * (16 - array.ndim)
    stem.with_suffix(".hdr").write_text("# Dimensions\n" + " ".join(map(str, dims)) + "\n")
    np.asarray(array, np.complex64).ravel(order="F").tofile(stem.with_suffix(".cfl"))


def _bart_slice(method: str, lam: float, iterations: int, kspace0, mask, maps) -> np.ndarray:
    """``bart pics`` (single-threaded: with 2 threads its l1 solve was 13× slower here) on one slice."""
    if shutil.which("bart") is None:
        raise DaganError("--cs-backend bart needs the 'bart' executable on PATH (Debian: apt-get install bart)")
    regulariser = {"sense": ["-l2", "-r", f"{lam:g}"], "tv": ["-R", f"T:3:0:{lam:g}"],
                   "wavelet": ["-R", f"W:3:0:{lam:g}"]}[method]
    with tempfile.TemporaryDirectory(prefix="dagan-bart-") as tmp:
        folder = Path(tmp)
        # BART dimensions: [x, y, slice, coil]; our arrays are [C, H, W]
        _write_cfl(folder / "k", kspace0.transpose(1, 2, 0)[:, :, None, :])
        _write_cfl(folder / "s", maps.transpose(1, 2, 0)[:, :, None, :])
        _write_cfl(folder / "p", mask[:, :, None, None])
        proc = subprocess.run(["bart", "pics", "-S", "-i", str(iterations), "-p", "p", *regulariser, "k", "s", "o"],
                              cwd=folder, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        if proc.returncode != 0:
            raise DaganError(f"bart pics failed: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}")
        return np.fromfile(folder / "o.cfl", np.complex64).reshape(mask.shape, order="F")


BACKENDS = {"sigpy": _sigpy_slice, "bart": _bart_slice}


@dataclass(frozen=True)
class ClassicalBaseline:
    """SENSE (ℓ2 weight ``lam``, 0 = plain SENSE), TV or ℓ1-wavelet reconstruction, slice by slice on the CPU,
    with sigpy (default) or BART (``bart pics``, when installed).

    Single-coil batches use a map of ones; multi-coil batches their ``maps``.  Both backends use the
    centred orthonormal FFT of :mod:`dagan_tf.kspace` (tested); their ``lam`` scales differ.
    """

    method: str
    lam: float
    iterations: int = 100
    backend: str = "sigpy"
    warm_up = False  # nothing to trace: evaluation times it from the first batch

    def __post_init__(self):
        if self.method not in SIGPY_BASELINES:
            raise DaganError(f"unknown baseline {self.method!r}; valid: {', '.join(SIGPY_BASELINES)}")
        if not (np.isfinite(self.lam) and (self.lam > 0 or (self.lam == 0 and self.method == "sense"))):
            raise DaganError(f"--lam must be a positive number, got {self.lam}")
        if self.backend not in BACKENDS:
            raise DaganError(f"unknown backend {self.backend!r}; valid: {', '.join(BACKENDS)}")
        if self.backend == "sigpy":
            _sigpy_app()

    def reconstruct_slice(self, kspace0: np.ndarray, mask: np.ndarray, maps: np.ndarray | None = None) -> np.ndarray:
        """Magnitude ``[H, W]`` from centred undersampled ``kspace0`` (``[H, W]``, or ``[C, H, W]`` with
        ``maps [C, H, W]``) and ``mask [H, W]``."""
        if maps is None:
            kspace0, maps = kspace0[None], np.ones((1,) + kspace0.shape, np.complex64)
        image = BACKENDS[self.backend](self.method, self.lam, self.iterations, kspace0.astype(np.complex64),
                                       mask.astype(np.float32), maps.astype(np.complex64))
        return np.abs(image).astype(np.float32)

    def __call__(self, batch: KSpaceBatch) -> tf.Tensor:
        kspace, masks = batch.kspace.numpy(), batch.mask.numpy()
        maps = [None] * len(kspace) if batch.maps is None else batch.maps.numpy()
        out = np.stack([self.reconstruct_slice(k, m, s) for k, m, s in zip(kspace, masks, maps)])
        return tf.constant(out[..., None])


def tune_lambda(method: str, batches: list[KSpaceBatch], iterations: int = 100,
                grid: tuple[float, ...] = LAMBDA_GRID, backend: str = "sigpy") -> tuple[float, dict[str, float]]:
    """``(best λ, {λ: mean NMSE})`` of ``method`` on the given validation batches."""
    scores = {}
    for lam in grid:
        baseline = ClassicalBaseline(method, lam, iterations, backend)
        nmse = [metrics.nmse(b.target, baseline(b)).numpy() for b in batches]
        scores[f"{lam:g}"] = float(np.mean(np.concatenate(nmse)))
    best = min(scores, key=scores.get)
    return float(best), scores


def _validation_batches(data, spec, calib_width: int | None, regime: str = "magnitude", phase_seed: int = 0,
                        n_slices: int = 16) -> list[dict]:
    """Up to ``n_slices`` validation slices, evenly spaced, as evaluation batches (multi-coil: with
    ESPIRiT maps when ``calib_width`` is given, else the true maps)."""
    from dagan_tf.coils import espirit_maps
    from dagan_tf.data.pipeline import evaluation_dataset, evaluation_masks
    from dagan_tf.data.prepare import PreparedSplit, load_split

    val = load_split(data, "val")
    idx = np.unique(np.linspace(0, len(val.images) - 1, min(n_slices, len(val.images))).astype(int))
    kspace = maps = None
    if val.kspace is not None:
        kspace = np.asarray(val.kspace[idx])
        if calib_width:
            maps = np.stack([espirit_maps(k, calib_width) for k in kspace])
        elif val.maps is not None:
            maps = np.asarray(val.maps[idx] if len(val.maps) > 1 else val.maps)
    subset = PreparedSplit(np.asarray(val.images[idx]), val.subjects[idx], val.sources[idx],
                           val.slice_numbers[idx], kspace, maps)
    masks = evaluation_masks(subset, spec)
    return list(evaluation_dataset(subset, 8, masks, True, regime=regime, phase_seed=phase_seed, split_key=1,
                                   phase_index=idx))


LAMBDA_CACHE = "baseline_lambdas.json"


def _lambda_cache(data) -> dict:
    """Tuned weights stored in the prepared folder, keyed by method, solver, mask, regime and maps."""
    path = Path(data) / LAMBDA_CACHE
    try:
        cache = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}
    return cache if isinstance(cache, dict) else {}


def _store_lambda(data, key: str, value: dict) -> None:
    from dagan_tf.outputs import write_cache

    cache = {**_lambda_cache(data), key: value}
    write_cache(Path(data) / LAMBDA_CACHE, lambda tmp: tmp.write_text(json.dumps(cache, indent=1)))


def build_baselines(names: list[str], data, spec, lam: float | None = None, iterations: int = 100,
                    tune: bool = False, echo: Callable[[str], None] = lambda _: None,
                    calib_width: int | None = None, backend: str = "sigpy", regime: str = "magnitude",
                    phase_seed: int = 0) -> tuple[dict[str, Reconstructor], dict]:
    """Reconstructors for the baseline ``names`` and the settings to record in ``metrics.json``.

    ``zero-filled-dc`` gives two rows, after 1 and after 100 projections.  ``tv``/``wavelet``
    use ``lam``, else (``tune``) the best of :data:`LAMBDA_GRID` on validation slices, else
    :data:`DEFAULT_LAMBDA`.  On multi-coil data ``calib_width`` (ESPIRiT calibration) tunes with
    estimated maps, ``None`` with the true ones; single-coil tuning simulates ``regime`` as the evaluation does.
    """
    recons: dict[str, Reconstructor] = {}
    settings: dict = {}
    for name in dict.fromkeys(names):
        if name == "zero-filled-dc":
            for n in PROJECTION_ITERATIONS:
                recons[f"zero_filled_dc{n}"] = projection(n)
            settings["zero_filled_dc"] = {"iterations": list(PROJECTION_ITERATIONS)}
        elif name in SIGPY_BASELINES:
            chosen, grid = lam, None
            if chosen is None and tune:
                key = json.dumps([name, backend, iterations, dataclasses.asdict(spec), regime, phase_seed, calib_width])
                cached = _lambda_cache(data).get(key)
                if cached is not None:
                    chosen, grid = cached["lambda"], cached["validation_nmse_by_lambda"]
                    echo(f"{name}: lambda {chosen:g} tuned before on this data, mask and regime (cached)")
                else:
                    echo(f"tuning the {name} weight on validation slices over "
                         f"{', '.join(f'{g:g}' for g in LAMBDA_GRID)}")
                    batches = _validation_batches(data, spec, calib_width, regime, phase_seed)
                    chosen, grid = tune_lambda(name, batches, iterations, backend=backend)
                    _store_lambda(data, key, {"lambda": chosen, "validation_nmse_by_lambda": grid})
                    edge = " (at the edge of the grid)" if chosen in (LAMBDA_GRID[0], LAMBDA_GRID[-1]) else ""
                    echo(f"{name}: lambda {chosen:g}{edge} (validation NMSE {grid[f'{chosen:g}']:.5f})")
            chosen = DEFAULT_LAMBDA[name] if chosen is None else chosen
            recons[name] = ClassicalBaseline(name, chosen, iterations, backend)
            settings[name] = {"lambda": chosen, "lambda_source": "--lam" if lam is not None else
                              ("tuned on validation NMSE" if tune else "default"),
                              "iterations": iterations, "validation_nmse_by_lambda": grid,
                              "solver": f"sigpy {SOLVERS[name]}" if backend == "sigpy"
                              else f"bart pics ({name}, OMP_NUM_THREADS=1)"}
        elif name != "zero-filled":
            raise DaganError(f"unknown baseline {name!r}; valid: zero-filled, {', '.join(BASELINES)}")
    return recons, settings
