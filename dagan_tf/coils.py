"""Multi-coil simulation from magnitude images: smooth phase, birdcage coil maps, coil k-space, noise.

No public source here has raw multi-coil k-space, so multi-coil data is
simulated from the magnitude volumes (as the cWGAN-AGB issue asks):

* **phase** (:func:`smooth_phase`): a white-noise field low-pass filtered with a
  Gaussian (σ = ``smoothness``·side, periodic), scaled to span ±``max_phase``,
  plus a random linear ramp of at most ``ramp`` radians across the image.  The
  image becomes ``x = m · exp(iφ)``; its k-space is then not conjugate-symmetric.
  The same phase model serves the single-coil ``phase`` regime of the pipeline.
* **maps** (:func:`birdcage_maps`): the birdcage model (coils on a circle of
  relative radius ``r`` around the field of view, magnitude ``1/distance``,
  phase rotating with the coil position; the model of ``sigpy.mri.birdcage_maps``,
  checked against it in a test), normalised so ``Σ_c |S_c|² = 1`` at every pixel,
  so the SENSE combination ``Σ_c conj(S_c)·ifft2c(k_c)`` returns ``x`` exactly.
* **k-space** ``k_c = fft2c(S_c · x) + n_c`` in the convention of
  :mod:`dagan_tf.kspace`; complex Gaussian noise ``n_c`` with per-component
  standard deviation ``rms(fft2c(S·x)) / noise_snr`` (``noise_snr = None``: none).

Everything is seeded: the same ``(seed, index)`` gives the same phase and noise.
"""
from __future__ import annotations

import numpy as np

from dagan_tf.errors import DaganError

DEFAULT_COILS = 8


def smooth_phase(shape: tuple[int, int], rng: np.random.Generator, max_phase: float = np.pi,
                 smoothness: float = 0.15, ramp: float = np.pi) -> np.ndarray:
    """A smooth random phase map ``[H, W]`` in radians (see module doc).

    The Gaussian filter (σ = ``smoothness``·max(H, W) pixels) is applied in the Fourier
    domain, i.e. with periodic boundaries.
    """
    h, w = shape
    sigma = smoothness * max(h, w)
    fy, fx = np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None, :]
    lowpass = np.exp(-2.0 * (np.pi * sigma) ** 2 * (fy ** 2 + fx ** 2))  # Fourier transform of the Gaussian
    field = np.fft.ifft2(np.fft.fft2(rng.standard_normal(shape)) * lowpass).real
    field = field - field.mean()
    field *= max_phase / max(np.abs(field).max(), 1e-12)
    yy, xx = np.meshgrid(np.linspace(-0.5, 0.5, h), np.linspace(-0.5, 0.5, w), indexing="ij")
    angle = rng.uniform(0, 2 * np.pi)
    return (field + ramp * (np.cos(angle) * xx + np.sin(angle) * yy)).astype(np.float32)


def phase_maps(seed: int, stream: int, keys: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``[B, H, W]`` smooth phases, map ``b`` from :func:`slice_rng` ``(seed, stream, *keys[b])``.

    ``keys`` is ``[B]`` (a slice index) or ``[B, K]``; the same keys give the same phases.
    """
    keys = np.asarray(keys).reshape(len(keys), -1)
    return np.stack([smooth_phase(shape, slice_rng(seed, stream, *k)) for k in keys]).astype(np.float32)


def birdcage_maps(n_coils: int, shape: tuple[int, int], r: float = 1.5) -> np.ndarray:
    """Birdcage sensitivities ``[C, H, W]`` complex64, normalised to ``Σ_c |S_c|² = 1``."""
    if n_coils < 1:
        raise ValueError(f"n_coils must be >= 1, got {n_coils}")
    ny, nx = shape
    c, y, x = np.mgrid[:n_coils, :ny, :nx]
    coil_x, coil_y = r * np.cos(c * 2 * np.pi / n_coils), r * np.sin(c * 2 * np.pi / n_coils)
    x_co, y_co = (x - nx / 2.0) / (nx / 2.0) - coil_x, (y - ny / 2.0) / (ny / 2.0) - coil_y
    maps = np.exp(1j * (np.arctan2(x_co, -y_co) - c * 2 * np.pi / n_coils)) / np.sqrt(x_co ** 2 + y_co ** 2)
    return normalise_maps(maps)


def normalise_maps(maps: np.ndarray, support: np.ndarray | None = None) -> np.ndarray:
    """``maps [C, H, W]`` scaled so ``Σ_c |S_c|² = 1`` (inside ``support`` when given; zero outside)."""
    norm = np.sqrt(np.sum(np.abs(maps) ** 2, axis=0))
    out = np.where(norm > 0, maps / np.maximum(norm, 1e-12), 0)
    if support is not None:
        out = out * support
    return out.astype(np.complex64)


def simulate_coil_kspace(image: np.ndarray, maps: np.ndarray, rng: np.random.Generator,
                         noise_snr: float | None = None, phase: np.ndarray | None = None) -> np.ndarray:
    """Fully sampled centred coil k-space ``[C, H, W]`` of ``image [H, W]`` (magnitude) · ``exp(i·phase)``."""
    from dagan_tf import kspace as ks

    x = image.astype(np.complex64) * (np.exp(1j * phase).astype(np.complex64) if phase is not None else 1)
    k = ks.fft2c(maps * x[None]).numpy()
    if noise_snr:
        sigma = np.sqrt(np.mean(np.abs(k) ** 2) / 2) / noise_snr
        k = k + sigma * (rng.standard_normal(k.shape) + 1j * rng.standard_normal(k.shape))
    return k.astype(np.complex64)


def slice_rng(seed: int, *keys: int) -> np.random.Generator:
    """The generator of one slice (phase, noise): a pure function of ``(seed, *keys)``."""
    return np.random.default_rng([int(seed), *map(int, keys)])


def espirit_maps(kspace: np.ndarray, calib_width: int = 24) -> np.ndarray:
    """ESPIRiT sensitivities ``[C, H, W]`` from the central ``calib_width``² of fully sampled
    ``kspace [C, H, W]`` (sigpy's ``EspiritCalib``; the ``cs`` extra), normalised like the true maps
    where ESPIRiT finds signal and zero elsewhere."""
    try:
        import sigpy.mri.app as app
    except ImportError:
        raise DaganError("estimating coil maps (ESPIRiT) needs sigpy: pip install 'dagan-tf[cs]'") from None
    maps = app.EspiritCalib(kspace.astype(np.complex64), calib_width=calib_width, show_pbar=False).run()
    return normalise_maps(np.asarray(maps))


def estimated_maps(folder, split: str, kspace: np.ndarray, calib_width: int = 24) -> np.ndarray:
    """ESPIRiT maps ``[N, C, H, W]`` of every slice of a multi-coil split, cached in the prepared folder
    as ``{split}_maps_espirit{calib_width}.npy`` (computed once, with progress; not cached where the
    folder is read-only)."""
    from pathlib import Path

    from dagan_tf.outputs import write_cache
    from dagan_tf.progress import progress

    cache = Path(folder) / f"{split}_maps_espirit{calib_width}.npy"
    if cache.is_file():
        maps = np.load(cache, mmap_mode="r", allow_pickle=False)
        if maps.shape == kspace.shape:
            return maps
    maps = np.stack([espirit_maps(np.asarray(k), calib_width)
                     for k in progress(kspace, f"ESPIRiT maps ({split})", len(kspace), "slices")])
    write_cache(cache, lambda tmp: np.save(tmp, maps))  # not cached where the folder is read-only
    return maps
