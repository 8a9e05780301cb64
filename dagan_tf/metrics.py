"""Image-quality metrics with one data-range policy.

Data-range policy (the only one in dagan-tf): PSNR and SSIM use the **maximum of
the ground-truth volume** (over all slices of that subject) as data range,
unless an explicit ``data_range`` is given.  For images normalised to [0, 1]
per volume this is (close to) 1.  Training-time validation, which sees batches
rather than volumes, uses the per-batch ground-truth maximum.

Definitions (per 2-D image; ``x`` ground truth, ``y`` reconstruction):

* ``nmse = ||y - x||² / ||x||²`` (squared).  The original DAGAN's "NMSE" is the
  unsquared ratio ``||y - x|| / ||x||``: ``nmse(..., dagan_compat=True)``.
* ``psnr = 10·log10(data_range² / mean((y - x)²))``.
* ``ssim``: 11×11 Gaussian window (σ = 1.5), population covariance, K1=0.01,
  K2=0.03, mean over the valid region (= skimage ``structural_similarity`` with
  ``gaussian_weights=True, sigma=1.5, use_sample_covariance=False``).
  ``dagan_compat=True`` gives the original's scikit-image 0.12 SSIM: 7×7
  uniform window, sample covariance, ``data_range=2``.

All functions take ``[N, H, W]`` or ``[N, H, W, 1]`` tensors/arrays and return
one value per image ``[N]`` (float32).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tensorflow as tf

METRIC_NAMES = ("nmse", "psnr", "ssim")


def _flat_images(x) -> tf.Tensor:
    x = tf.cast(tf.convert_to_tensor(x), tf.float32)
    if x.shape.rank == 4:
        x = x[..., 0]
    return x


def _per_image_range(target: tf.Tensor, data_range) -> tf.Tensor:
    n = tf.shape(target)[0]
    if data_range is None:
        return tf.fill([n], tf.reduce_max(target))
    return tf.broadcast_to(tf.cast(data_range, tf.float32), [n])


def nmse(target, estimate, dagan_compat: bool = False) -> tf.Tensor:
    """``||y - x||² / ||x||²`` per image ``[N]``; ``dagan_compat``: the unsquared ratio."""
    x, y = _flat_images(target), _flat_images(estimate)
    err = tf.reduce_sum(tf.square(y - x), axis=[1, 2])
    ref = tf.reduce_sum(tf.square(x), axis=[1, 2])
    ratio = err / tf.maximum(ref, 1e-12)
    return tf.sqrt(ratio) if dagan_compat else ratio


def psnr(target, estimate, data_range=None) -> tf.Tensor:
    """PSNR in dB per image ``[N]``; ``data_range`` scalar or ``[N]`` (default: batch maximum of target)."""
    x, y = _flat_images(target), _flat_images(estimate)
    mse = tf.reduce_mean(tf.square(y - x), axis=[1, 2])
    r = _per_image_range(x, data_range)
    return 10.0 * tf.math.log(tf.square(r) / tf.maximum(mse, 1e-20)) / tf.math.log(10.0)


def _window(gaussian: bool, size: int, sigma: float) -> tf.Tensor:
    if gaussian:
        # skimage: gaussian_filter(sigma, truncate=3.5) -> 11 taps for sigma 1.5
        radius = size // 2
        g = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
        g /= g.sum()
    else:
        g = np.full(size, 1.0 / size)
    w = np.outer(g, g).astype(np.float32)
    return tf.constant(w[:, :, None, None])


def ssim(target, estimate, data_range=None, dagan_compat: bool = False) -> tf.Tensor:
    """Mean SSIM per image ``[N]`` over the valid (unpadded) region.

    ``data_range`` scalar or ``[N]``; default the batch maximum of ``target``
    (``2.0`` with ``dagan_compat``).
    """
    x, y = _flat_images(target), _flat_images(estimate)
    if dagan_compat:
        win, sample_cov, data_range = _window(False, 7, 0.0), True, 2.0
    else:
        win, sample_cov = _window(True, 11, 1.5), False
    r = _per_image_range(x, data_range)[:, None, None]
    c1, c2 = (0.01 * r) ** 2, (0.03 * r) ** 2
    n_px = float(win.shape[0] * win.shape[1])
    cov_norm = n_px / (n_px - 1.0) if sample_cov else 1.0

    def filt(t):
        return tf.nn.conv2d(t[..., None], win, strides=1, padding="VALID")[..., 0]

    ux, uy = filt(x), filt(y)
    vx = cov_norm * (filt(x * x) - ux * ux)
    vy = cov_norm * (filt(y * y) - uy * uy)
    vxy = cov_norm * (filt(x * y) - ux * uy)
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return tf.reduce_mean(s, axis=[1, 2])


def compute_all(target, estimate, data_range=None, dagan_compat: bool = False) -> dict[str, np.ndarray]:
    """NMSE, PSNR and SSIM per image as numpy ``[N]`` arrays.

    With ``dagan_compat`` all three follow the original code: unsquared NMSE,
    PSNR with data range 1 and SSIM as in :func:`ssim`.
    """
    if dagan_compat:
        data_range = 1.0
    return {
        "nmse": nmse(target, estimate, dagan_compat).numpy(),
        "psnr": psnr(target, estimate, data_range).numpy(),
        "ssim": ssim(target, estimate, data_range, dagan_compat).numpy(),
    }


def volume_data_ranges(target: np.ndarray, subjects: np.ndarray) -> np.ndarray:
    """Per-slice data range ``[N]``: the maximum of each slice's subject volume (the policy above)."""
    ranges = np.empty(len(subjects), np.float32)
    for subject in np.unique(subjects):
        sel = subjects == subject
        ranges[sel] = np.max(target[sel])
    return ranges


@dataclass
class Summary:
    mean: float
    std: float

    def as_dict(self) -> dict:
        return {"mean": self.mean, "std": self.std}


def summarise(values: np.ndarray) -> Summary:
    """Mean ± (population) standard deviation of per-slice values."""
    values = np.asarray(values, np.float64)
    return Summary(float(np.mean(values)), float(np.std(values)))


def per_volume(values: np.ndarray, subjects: np.ndarray) -> dict[str, float]:
    """Average per-slice values within each subject: ``{subject: mean}``."""
    return {str(s): float(np.mean(values[subjects == s])) for s in np.unique(subjects)}


def summary_json(per_slice: dict[str, np.ndarray], subjects: np.ndarray) -> dict:
    """``{"psnr": {"mean", "std", "per_volume": {"mean", "std"}}, ...}`` for a dict of per-slice metrics."""
    out = {}
    for name, values in per_slice.items():
        vol = np.array(list(per_volume(values, subjects).values()))
        out[name] = {**summarise(values).as_dict(), "per_volume": summarise(vol).as_dict()}
    return out


def dice_per_class(predicted: np.ndarray, truth: np.ndarray, classes) -> np.ndarray:
    """Hard Dice ``2|P∩T| / (|P| + |T|)`` per slice and class: ``[N, len(classes)]`` from label maps
    ``[N, H, W]``; NaN where the class is absent from ``truth`` (such slices do not count)."""
    out = np.full((len(truth), len(classes)), np.nan)
    for j, k in enumerate(classes):
        p, t = predicted == k, truth == k
        overlap, sizes = np.sum(p & t, axis=(1, 2)), np.sum(p, axis=(1, 2)) + np.sum(t, axis=(1, 2))
        present = np.any(t, axis=(1, 2))
        out[present, j] = 2.0 * overlap[present] / sizes[present]
    return out


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """FID between two feature sets ``[N, D]``: ``|μa − μb|² + Tr(Σa + Σb − 2 (Σa Σb)^½)`` (scipy ``sqrtm``;
    sample covariances; the imaginary round-off of the square root dropped)."""
    from scipy import linalg

    a, b = np.asarray(features_a, np.float64), np.asarray(features_b, np.float64)
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    sigma_a, sigma_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = linalg.sqrtm(sigma_a @ sigma_b)
    if not np.all(np.isfinite(root)):  # singular products: the usual offset (as the reference implementation)
        offset = np.eye(len(sigma_a)) * 1e-6
        root = linalg.sqrtm((sigma_a + offset) @ (sigma_b + offset))
    return float(np.sum((mu_a - mu_b) ** 2) + np.trace(sigma_a) + np.trace(sigma_b) - 2 * np.trace(np.real(root)))
