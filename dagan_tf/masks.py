"""Undersampling masks (pure numpy, seeded, centred layout).

Every mask is a ``float32`` array ``[H, W]`` of {0, 1} in the **centred** layout
of :mod:`dagan_tf.kspace` (DC at ``[H//2, W//2]``).  1-D (Cartesian) kinds
sample whole **columns** (phase encoding along axis 1), like DAGAN's Gaussian1D.
The number of samples is exact: ``round(ratio * W)`` columns for 1-D kinds and
``round(ratio * H * W)`` points for 2-D kinds, so the measured fraction is the
requested one to within half a line / a pixel.  A request that cannot give
that (a ratio too small for one line, a centre larger than the samples) is an
error, never a silently different mask.  A mask file carries its own ratio: a
ratio given with it must match the measured fraction to within
:data:`FILE_RATIO_TOLERANCE`.

Kinds: ``gaussian1d``, ``gaussian2d``, ``poisson2d``, ``vds1d``, ``equispaced``,
``random1d``; the original DAGAN ``.mat`` files load with :func:`load_dagan_mask`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from dagan_tf.errors import DaganError

MASK_KINDS = ("gaussian1d", "gaussian2d", "poisson2d", "vds1d", "equispaced", "random1d")
DAGAN_MASK_KEYS = ("maskRS1", "maskRS2", "population_matrix")
FILE_RATIO_TOLERANCE = 0.005


def sampled_fraction(mask: np.ndarray) -> float:
    """Fraction of sampled k-space locations of a {0,1} mask."""
    return float(np.count_nonzero(mask)) / float(np.size(mask))


def _check_ratio(ratio: float) -> None:
    if not (0.0 < ratio <= 1.0):
        raise DaganError(f"--ratio must be in (0, 1], got {ratio}")


def _weighted_pick(rng: np.random.Generator, weights: np.ndarray, k: int) -> np.ndarray:
    """Indices of ``k`` distinct items drawn with probability proportional to ``weights``.

    Gumbel top-k: the same distribution as sequential weighted sampling without
    replacement, in O(n).
    """
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    w = np.asarray(weights, dtype=np.float64)
    keys = np.log(np.maximum(w, 1e-300)) - np.log(-np.log(rng.uniform(1e-300, 1.0, size=w.shape)))
    keys[w <= 0] = -np.inf
    return np.argpartition(-keys, k - 1)[:k]


def _centre_band(n: int, width: int) -> np.ndarray:
    start = n // 2 - width // 2
    return np.arange(start, start + width)


def _columns_to_mask(shape: tuple[int, int], columns: np.ndarray) -> np.ndarray:
    mask = np.zeros(shape, dtype=np.float32)
    mask[:, columns] = 1.0
    return mask


def _count(ratio: float, n: int, what: str) -> int:
    """``round(ratio · n)`` samples; an error when that is zero."""
    count = int(round(ratio * n))
    if count < 1:
        raise DaganError(f"ratio {ratio} gives no {what} of {n}; the ratio must be above {0.5 / n:.4g}")
    return count


def _check_acs(acs: int, needed: int, available: int, what: str) -> None:
    """``acs`` centre lines/block side needing ``needed`` of the ``available`` samples."""
    if acs < 0:
        raise DaganError(f"--acs must be >= 0, got {acs}")
    if needed > available:
        raise DaganError(f"--acs {acs} needs {needed} {what}, more than the {available} this ratio samples")


def _lines_1d(shape, ratio, acs, rng, weights_fn) -> np.ndarray:
    """Whole-column mask: ``acs`` centre columns, the rest drawn with ``weights_fn(distance)``."""
    w = shape[1]
    n_lines = _count(ratio, w, "column")
    _check_acs(acs, acs, n_lines, "columns")
    centre = _centre_band(w, acs)
    outside = np.setdiff1d(np.arange(w), centre)
    dist = np.abs(outside - w // 2) / (w / 2)
    picked = outside[_weighted_pick(rng, weights_fn(dist), n_lines - acs)]
    return _columns_to_mask(shape, np.concatenate([centre, picked]))


def _default_acs(w: int, ratio: float) -> int:
    # Like the DAGAN Gaussian1D masks: about half of the lines, at most 1/8 of k-space, form the centre band.
    return max(1, min(int(round(0.125 * w)), int(round(ratio * w)) // 2))


def gaussian1d(shape, ratio, seed=0, acs=None) -> np.ndarray:
    """Cartesian columns with a Gaussian density (σ = W/6) and ``acs`` fully sampled centre columns."""
    _check_ratio(ratio)
    acs = _default_acs(shape[1], ratio) if acs is None else acs
    return _lines_1d(shape, ratio, acs, np.random.default_rng(seed),
                     lambda d: np.exp(-0.5 * (d * 3.0) ** 2))


def vds1d(shape, ratio, seed=0, acs=None) -> np.ndarray:
    """1-D variable density falling linearly from the centre (cWGAN-AGB: R=4 with 12 centre lines).

    ``acs=None`` takes 12 centre lines (fewer when the ratio samples fewer).
    """
    _check_ratio(ratio)
    acs = min(12, _count(ratio, shape[1], "column")) if acs is None else acs
    return _lines_1d(shape, ratio, acs, np.random.default_rng(seed),
                     lambda d: np.maximum(1.0 - d, 1e-3))


def random1d(shape, ratio, seed=0, acs=None, center_fraction=0.08) -> np.ndarray:
    """fastMRI-style random columns: a centre fraction plus uniformly random columns."""
    _check_ratio(ratio)
    acs = min(int(round(center_fraction * shape[1])), _count(ratio, shape[1], "column")) if acs is None else acs
    return _lines_1d(shape, ratio, acs, np.random.default_rng(seed), np.ones_like)


def equispaced(shape, ratio, seed=0, acs=None, center_fraction=0.08) -> np.ndarray:
    """fastMRI-style equispaced columns (random offset) plus a fully sampled centre fraction."""
    _check_ratio(ratio)
    w = shape[1]
    n_lines = _count(ratio, w, "column")
    acs = min(int(round(center_fraction * w)), n_lines) if acs is None else acs
    _check_acs(acs, acs, n_lines, "columns")
    centre = _centre_band(w, acs)
    outside = np.setdiff1d(np.arange(w), centre)
    n_out = n_lines - acs
    if n_out == 0:
        return _columns_to_mask(shape, centre)
    step = len(outside) / n_out
    offset = np.random.default_rng(seed).uniform(0, step)
    picked = outside[np.minimum((offset + step * np.arange(n_out)).astype(int), len(outside) - 1)]
    return _columns_to_mask(shape, np.concatenate([centre, picked]))


def _radius_grid(shape) -> np.ndarray:
    h, w = shape
    yy, xx = np.meshgrid(np.arange(h) - h // 2, np.arange(w) - w // 2, indexing="ij")
    return np.sqrt((yy / (h / 2)) ** 2 + (xx / (w / 2)) ** 2)  # 1 at the edge midpoints


def _centre_block(shape, acs) -> np.ndarray:
    """Boolean ``[H, W]`` with an ``acs × acs`` block around DC set."""
    block = np.zeros(shape, bool)
    if acs > 0:
        block[np.ix_(_centre_band(shape[0], acs), _centre_band(shape[1], acs))] = True
    return block


def gaussian2d(shape, ratio, seed=0, acs=None) -> np.ndarray:
    """Random points with a 2-D Gaussian density (σ = 0.4 of the half-width) and an ``acs``² centre block."""
    _check_ratio(ratio)
    n_points = _count(ratio, shape[0] * shape[1], "point")
    acs = max(1, int(round(0.2 * np.sqrt(n_points)))) if acs is None else acs  # DAGAN-like dense centre
    _check_acs(acs, acs * acs, n_points, "points")
    centre = _centre_block(shape, acs).ravel()
    density = np.exp(-0.5 * (_radius_grid(shape) / 0.4) ** 2).ravel() + 1e-3
    density[centre] = 0.0
    picked = _weighted_pick(np.random.default_rng(seed), density, n_points - int(centre.sum()))
    mask = centre.astype(np.float32)
    mask[picked] = 1.0
    return mask.reshape(shape)


def poisson2d(shape, ratio, seed=0, acs=None) -> np.ndarray:
    """Variable-density Poisson-disc sampling with a fully sampled ``acs``² centre block.

    Minimum distance between samples grows with the distance from the centre
    (``r(p) = r0 · (1 + 3·|p|)``).  Candidates are visited in a density-weighted
    random order and accepted when no earlier sample lies within ``r``; the
    walk stops at exactly ``round(ratio·H·W)`` samples.  ``r0`` shrinks until a
    walk reaches that count.  Pure numpy; ~0.2 s for 256².
    """
    _check_ratio(ratio)
    h, w = shape
    n_points = _count(ratio, h * w, "point")
    acs = max(1, int(round(0.15 * np.sqrt(n_points)))) if acs is None else acs
    _check_acs(acs, acs * acs, n_points, "points")
    rng = np.random.default_rng(seed)
    centre = _centre_block(shape, acs)
    radius_scale = 1.0 + 3.0 * _radius_grid(shape)
    # Random sequential packing reaches ~0.7/r² points per unit area at saturation.
    r0 = np.sqrt(0.7 * np.sum(1.0 / radius_scale ** 2) / (1.3 * n_points))
    order_keys = -np.log(rng.uniform(1e-12, 1.0, size=h * w)) * radius_scale.ravel() ** 2
    order = np.argsort(order_keys)
    for _ in range(30):
        mask = _poisson_walk(shape, order, radius_scale * r0, centre, n_points)
        if mask.sum() == n_points:
            return mask
        r0 *= 0.85
    raise DaganError(f"poisson2d could not place {n_points} samples in {shape}")


def _poisson_walk(shape, order, radius, centre, n_points) -> np.ndarray:
    h, w = shape
    blocked = centre.copy()
    mask = centre.astype(np.float32)
    count = int(centre.sum())
    rows, cols = np.divmod(order, w)
    for y, x in zip(rows.tolist(), cols.tolist()):
        if count >= n_points:
            break
        if blocked[y, x]:
            continue
        mask[y, x] = 1.0
        count += 1
        r = radius[y, x]
        ri = int(r)
        if ri >= 1:
            y0, y1, x0, x1 = max(0, y - ri), min(h, y + ri + 1), max(0, x - ri), min(w, x + ri + 1)
            yy, xx = np.ogrid[y0 - y:y1 - y, x0 - x:x1 - x]
            blocked[y0:y1, x0:x1] |= (yy * yy + xx * xx) < r * r
        else:
            blocked[y, x] = True
    return mask


_GENERATORS = {
    "gaussian1d": gaussian1d,
    "gaussian2d": gaussian2d,
    "poisson2d": poisson2d,
    "vds1d": vds1d,
    "equispaced": equispaced,
    "random1d": random1d,
}


def make_mask(kind: str, shape: tuple[int, int], ratio: float, seed: int = 0,
              acs: int | None = None) -> np.ndarray:
    """Build a centred ``float32`` {0,1} mask ``[H, W]`` of the given kind.

    Args:
        kind: one of :data:`MASK_KINDS`.
        shape: ``(H, W)``.
        ratio: requested sampled fraction in (0, 1].
        seed: RNG seed; the same seed gives the same mask.
        acs: fully sampled centre lines (1-D kinds) or block side (2-D kinds);
            ``None`` picks the kind's default.
    """
    if kind not in _GENERATORS:
        raise DaganError(f"unknown mask kind {kind!r}; valid kinds: {', '.join(MASK_KINDS)}")
    if seed < 0:
        raise DaganError(f"mask seed must be >= 0, got {seed}")
    shape = tuple(int(s) for s in shape)
    if acs is not None and acs > min(shape):
        raise DaganError(f"--acs {acs} is larger than the {shape[0]}×{shape[1]} mask")
    kwargs = {} if acs is None else {"acs": int(acs)}
    return _GENERATORS[kind](shape, float(ratio), seed=seed, **kwargs)


def write_mask(mask: np.ndarray, out: str | os.PathLike, png: str | os.PathLike | None = None,
               overwrite: bool = False) -> None:
    """Save ``mask`` as ``.npy`` (and optionally an 8-bit PNG), each file atomically."""
    from dagan_tf.outputs import atomic_output_file, check_new_output

    for path in (out, png):
        if path is not None:
            check_new_output(path, overwrite)
    with atomic_output_file(out, overwrite) as tmp:
        np.save(tmp, mask.astype(np.float32))
    if png is not None:
        from dagan_tf.figures import write_png

        with atomic_output_file(png, overwrite) as tmp:
            write_png(tmp, (mask * 255).astype(np.uint8))


def load_dagan_mask(path: str | os.PathLike) -> np.ndarray:
    """Load an original DAGAN ``.mat`` mask (keys ``maskRS1``, ``maskRS2`` or ``population_matrix``).

    Returns a centred ``float32`` {0,1} array (DAGAN masks are already centred).
    """
    import scipy.io

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DaganError(f"mask file not found: {path}")
    try:
        contents = scipy.io.loadmat(path)
    except Exception as exc:  # scipy raises several types for corrupt files
        raise DaganError(f"cannot read mask file {path}: {exc}") from None
    for key in DAGAN_MASK_KEYS:
        if key in contents:
            mask = np.asarray(contents[key])
            if mask.ndim != 2 or not np.issubdtype(mask.dtype, np.number):
                raise DaganError(f"{path}: {key} is not a 2-D numeric mask (shape {mask.shape})")
            return (mask != 0).astype(np.float32)
    raise DaganError(f"{path} holds none of the DAGAN mask keys {', '.join(DAGAN_MASK_KEYS)}")


@dataclass(frozen=True)
class MaskSpec:
    """How masks are drawn for a data split.

    ``kind`` is a mask kind or a path to a DAGAN ``.mat`` file.  With
    ``per_sample=False`` every slice uses the mask of ``seed``; otherwise slice
    ``i`` of a fixed split uses seed ``seed + 1 + i`` (training draws fresh seeds).
    """

    kind: str
    ratio: float | None = None
    seed: int = 0
    acs: int | None = None
    per_sample: bool = False

    @property
    def is_file(self) -> bool:
        return self.kind.endswith(".mat")

    def describe(self) -> str:
        """The spec in words, e.g. ``vds1d 0.25, 12 centre lines, seed 0, one mask per slice``."""
        return (self.kind + (f" {self.ratio:g}" if self.ratio is not None else "")
                + (f", {self.acs} centre lines" if self.acs else "") + f", seed {self.seed}"
                + (", one mask per slice" if self.per_sample else ", one mask for all slices"))

    def validate(self) -> None:
        if self.is_file:
            if not os.path.isfile(self.kind):
                raise DaganError(f"mask file not found: {self.kind}")
            if self.per_sample:
                raise DaganError("a mask file gives one fixed mask; per-sample masks need a mask kind")
            return
        if self.kind not in _GENERATORS:
            raise DaganError(f"unknown mask kind {self.kind!r}; valid kinds: {', '.join(MASK_KINDS)} "
                             "or a DAGAN .mat file")
        if self.ratio is None:
            raise DaganError(f"mask kind {self.kind} needs --ratio")
        _check_ratio(self.ratio)

    def build(self, shape: tuple[int, int], seed: int | None = None) -> np.ndarray:
        """The mask ``[H, W]`` for ``seed`` (default: the spec's own seed)."""
        self.validate()
        if self.is_file:
            mask = load_dagan_mask(self.kind)
            if mask.shape != tuple(shape):
                raise DaganError(f"mask {self.kind} has shape {mask.shape}, images are {tuple(shape)}")
            measured = sampled_fraction(mask)
            if self.ratio is not None and abs(measured - self.ratio) > FILE_RATIO_TOLERANCE:
                raise DaganError(f"mask file {self.kind} samples {measured:.4f}, not the ratio {self.ratio}; "
                                 "leave the ratio out with a mask file (it has its own)")
            return mask
        return make_mask(self.kind, shape, self.ratio, self.seed if seed is None else seed, self.acs)

    def for_slice(self, shape: tuple[int, int], index: int) -> np.ndarray:
        """The fixed evaluation mask of slice ``index``."""
        return self.build(shape, self.seed + 1 + int(index) if self.per_sample else None)
