"""tf.data pipelines from a prepared directory.

Training batches are a pure function of ``(seed, epoch, step)``: the epoch's
order is a stateless shuffle seeded by ``(seed, epoch)`` and each batch's
augmentation and masks are seeded by ``(seed, global_step)``.  Resuming at an
epoch boundary therefore reproduces the uninterrupted run exactly.

Elements are :class:`~dagan_tf.data.batches.ImagePair` ``(zero_filled, target)``, both
``[B, H, W, 1]`` float32 (target in [0, 1], zero-filled magnitude not clipped), or with
``with_kspace=True`` a :class:`~dagan_tf.data.batches.KSpaceBatch` (undersampled k-space, mask and the
complex images as real/imaginary channels); evaluation batches also carry the slice numbers ``index``.

Regimes (:data:`REGIMES`) say how single-coil k-space is simulated from the
magnitude images: ``magnitude`` (the papers' setting: k-space of the real,
non-negative image, hence conjugate-symmetric) or ``phase`` (k-space of
``m·exp(iφ)`` with the smooth random phase of :func:`dagan_tf.coils.smooth_phase`;
for evaluation a pure function of ``(phase_seed, split, slice)``, for training
fresh per example and step).  Evaluation batches of a multi-coil split
carry the coil k-space ``kspace [B, C, H, W]`` (undersampled), the sensitivity
``maps [B, C, H, W]``, the SENSE-combined zero-filled magnitude
``|Σ_c conj(S_c)·ifft2c(k_c)|`` and the SENSE-combined fully sampled image ``target_complex``.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from dagan_tf import kspace as ks
from dagan_tf.data.augment import AugmentConfig, augment_batch, augment_geometry
from dagan_tf.data.batches import ImagePair, KSpaceBatch, LabelledBatch, RawBatch
from dagan_tf.data.prepare import PreparedSplit
from dagan_tf.errors import DaganError
from dagan_tf.masks import MaskSpec


REGIMES = ("magnitude", "phase")
TRAINING_PHASE_STREAM = 3  # phase keys (seed, stream, ...): streams 0-2 are the splits, 3 the training stream
PREDICT_PHASE_STREAM = 4  # ... and 4 the slices of a volume given to predict


def _channels(z: tf.Tensor) -> tf.Tensor:
    """Complex ``[B, H, W]`` -> real/imaginary channels ``[B, H, W, 2]``."""
    return tf.stack([tf.math.real(z), tf.math.imag(z)], axis=-1)


def _simulate(target: tf.Tensor, mask: tf.Tensor, with_kspace: bool, phase: tf.Tensor | None = None,
              complex_images: bool = False):
    """Undersample ``target [B, H, W, 1]`` (times ``exp(i·phase [B, H, W])`` when given) with ``mask``.

    Without ``with_kspace``: the :class:`ImagePair` of magnitudes, or with ``complex_images`` of their
    complex real/imaginary channels ``[B, H, W, 2]``; with it, the :class:`KSpaceBatch`.
    """
    m = target[..., 0]
    image = tf.complex(m, tf.zeros_like(m)) if phase is None else tf.complex(m * tf.cos(phase), m * tf.sin(phase))
    k, zf = ks.undersample(image, mask)
    zero_filled = tf.abs(zf)[..., None]
    if not with_kspace:
        return ImagePair(_channels(zf), _channels(image)) if complex_images else ImagePair(zero_filled, target)
    masks = tf.broadcast_to(mask, tf.shape(target)[:3])
    return KSpaceBatch(zero_filled, _channels(zf), target, _channels(image), masks, k)


def _phases(seed: int, stream: int, shape: tuple[int, int]):
    """``keys [B] or [B, K] -> phases [B, H, W]`` (numpy, :func:`dagan_tf.coils.phase_maps`)."""
    from dagan_tf.coils import phase_maps

    def fn(keys):
        out = tf.numpy_function(lambda k: phase_maps(seed, stream, k, shape), [keys], tf.float32)
        return tf.ensure_shape(out, [None, *shape])

    return fn


def _check_regime(regime: str) -> None:
    if regime not in REGIMES:
        raise DaganError(f"unknown regime {regime!r}; valid: {', '.join(REGIMES)}")


def _gather_images(images: np.ndarray):
    """``indices -> images[indices][..., None]`` as float32 ``[B, H, W, 1]``."""
    rows = _gather_rows(images, tf.float32)
    return lambda indices: rows(indices)[..., None]


def training_dataset(split: PreparedSplit, batch_size: int, mask: MaskSpec, seed: int = 0,
                     start_step: int = 0, augment: AugmentConfig | None = AugmentConfig(),
                     with_kspace: bool = False, regime: str = "magnitude", complex_images: bool = False,
                     maps: np.ndarray | None = None, patch_size: int | None = None,
                     on_device: bool = False) -> tuple[tf.data.Dataset, int]:
    """Endless training batches from global step ``start_step``; returns ``(dataset, batches_per_pass)``.

    Each pass over the data has ``N // batch_size`` full batches; batch ``s`` of the
    stream is the same whatever ``start_step`` the stream began at (``complex_images``: tuples of
    real/imaginary channels, for complex networks).  ``mask.per_sample`` draws a
    fresh seeded mask per image (numpy; costly for ``poisson2d``).  A multi-coil split gives
    multi-coil :class:`KSpaceBatch` (module doc) of its stored k-space, with ``maps``
    ``[1 or N, C, H, W]`` (default: the split's own; e.g. :func:`dagan_tf.coils.estimated_maps`).
    ``patch_size`` cuts each ``(zero_filled, target)`` pair at one random location after the whole slice was
    undersampled (:func:`random_crops`; never undersample a crop).

    Batches are made in two stages: the host gathers the slices and draws the masks and phases (a
    :class:`RawBatch`), then :func:`batch_stage` augments, undersamples and crops.  ``on_device``: the dataset yields the raw batches, for the training
    step to finish on its device.
    """
    _check_regime(regime)
    n, h, w = split.images.shape
    if patch_size is not None and (with_kspace or split.kspace is not None or patch_size > min(h, w)):
        raise DaganError(f"patch training needs single-coil image pairs and a patch ({patch_size}) no larger "
                         f"than the {h}×{w} slices")
    steps = n // batch_size
    if steps == 0:
        raise DaganError(f"batch size {batch_size} exceeds the {n} training slices")
    batch_masks = _batch_masks(mask, seed, batch_size, (h, w))
    gather = _gather_images(split.images)
    if split.kspace is not None:
        coil_batch = _checked_multicoil_batch(split, maps, augment, gather)

    def raw_batch(step, indices):
        phase = None
        if regime == "phase":
            keys = tf.stack([tf.fill([batch_size], step), tf.range(batch_size, dtype=tf.int64)], axis=1)
            phase = training_phases(keys)
        return RawBatch(tf.ensure_shape(gather(indices), [batch_size, h, w, 1]),  # static: kernels pick by size
                        tf.broadcast_to(batch_masks(step), [batch_size, h, w]),
                        tf.tile(tf.stack([tf.constant(seed, tf.int64), step])[None], [batch_size, 1]), phase)

    def make_batch(step, indices):
        if split.kspace is not None:
            raw = coil_batch(indices, batch_masks(step), tf.stack([tf.constant(seed, tf.int64), step]))
        else:
            raw = raw_batch(step, indices)
        return raw if on_device else finish(raw)

    finish = batch_stage(augment, with_kspace, complex_images, patch_size)
    training_phases = _phases(seed, TRAINING_PHASE_STREAM, (h, w))
    ds = _index_stream(n, batch_size, seed, start_step).map(make_batch, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE), steps


def _batch_masks(mask: MaskSpec, seed: int, batch_size: int, shape: tuple[int, int]):
    """``step -> masks``: the fixed mask ``[1, H, W]``, or with ``mask.per_sample`` one mask per image
    ``[batch_size, H, W]`` seeded by ``(seed, step)`` (float32, 0/1)."""
    if not mask.per_sample:
        fixed = tf.constant(mask.build(shape))[None]
        return lambda step: fixed

    def draw(step_value):
        rng = np.random.SeedSequence([seed, int(step_value)]).generate_state(batch_size)
        return np.stack([mask.build(shape, int(s)) for s in rng]).astype(np.float32)
    return lambda step: tf.ensure_shape(tf.numpy_function(draw, [step], tf.float32), [batch_size, *shape])


def _checked_multicoil_batch(split: PreparedSplit, maps: np.ndarray | None, augment: AugmentConfig | None, gather):
    """:func:`_multicoil_batch` of ``split`` with ``maps`` (default: its own), after checking that it has maps
    and that ``augment`` asks only for flips and rotations."""
    if augment is not None and (augment.elastic_alpha or augment.shift or augment.zoom != (1, 1)
                                or augment.gamma != (1, 1)):
        raise DaganError("multi-coil k-space takes flips and rotations only; set data.augment_style flip_rotate")
    maps = split.maps if maps is None else maps
    if maps is None:
        raise DaganError("this multi-coil split has no sensitivity maps of its own; estimate them first")
    return _multicoil_batch(split, maps, gather)


def batch_stage(augment: AugmentConfig | None, with_kspace: bool, complex_images: bool, patch_size: int | None):
    """``RawBatch -> training batch`` (:func:`training_dataset`): augmentation, k-space simulation and patch crop.

    Its draws come from the raw batch's key ``(seed, step)``, folded with the replica's number when it runs in
    the training step of one of several replicas (each finishing its slice of the batch).
    """
    def finish(raw: RawBatch):
        key = raw.key[0]
        replica = tf.distribute.get_replica_context()
        if replica is not None and replica.num_replicas_in_sync > 1:
            key = tf.random.experimental.stateless_fold_in(key, replica.replica_id_in_sync_group)
        if raw.coil_kspace is not None:
            return finish_coils(raw, key, augment)
        target = raw.target
        if augment is not None:
            target = tf.ensure_shape(augment_batch(target, key, augment), raw.target.shape)
        pair = _simulate(target, raw.mask, with_kspace, raw.phase, complex_images)
        return pair if patch_size is None else ImagePair(*random_crops(pair, patch_size, key))

    return finish


CROP_STREAM = 7  # stateless key of the patch offsets, folded into (seed, step)


def random_crops(images: tuple[tf.Tensor, ...], size: int, key: tf.Tensor) -> tuple[tf.Tensor, ...]:
    """The same random ``size × size`` window of every image ``b`` of each ``[B, H, W, C]`` tensor in
    ``images``; offsets uniform over the valid positions, a pure function of ``key`` (``[2]`` int)."""
    first = images[0]
    b, h, w = tf.shape(first)[0], first.shape[1], first.shape[2]
    keys = tf.random.experimental.stateless_split(
        tf.random.experimental.stateless_fold_in(tf.cast(key, tf.int64), CROP_STREAM), 2)
    rows = tf.random.stateless_uniform([b], keys[0], 0, h - size + 1, dtype=tf.int32)
    cols = tf.random.stateless_uniform([b], keys[1], 0, w - size + 1, dtype=tf.int32)
    window = tf.range(size)

    def crop(x):
        x = tf.gather(x, rows[:, None] + window, axis=1, batch_dims=1)
        return tf.gather(x, cols[:, None] + window, axis=2, batch_dims=1)

    return tuple(crop(x) for x in images)


def _index_stream(n: int, batch_size: int, seed: int, start_step: int) -> tf.data.Dataset:
    """Endless ``(global step, indices [batch_size])`` from ``start_step``: each pass over ``n`` items is a
    stateless shuffle seeded by ``(seed, pass)`` cut into ``n // batch_size`` full batches."""
    steps = n // batch_size

    def epoch_batches(epoch):
        perm = tf.random.experimental.stateless_shuffle(tf.range(n, dtype=tf.int64), seed=[seed, epoch])
        batches = tf.data.Dataset.from_tensor_slices(perm[: steps * batch_size]).batch(batch_size)
        return batches.enumerate().map(lambda i, idx: (epoch * steps + i, idx))

    return tf.data.Dataset.counter(start_step // steps).flat_map(epoch_batches).skip(start_step % steps)


def segmentation_dataset(split: PreparedSplit, batch_size: int, seed: int = 0, start_step: int | None = 0
                         ) -> tf.data.Dataset:
    """The :class:`LabelledBatch` of fully sampled slices and their label maps: endless shuffled batches from global step ``start_step`` (as :func:`training_dataset`), or
    with ``start_step=None`` every slice once, in order."""
    if split.labels is None:
        raise DaganError("this split has no label maps; prepare the data with --labels")
    n = split.images.shape[0]
    if start_step is not None and n < batch_size:
        raise DaganError(f"batch size {batch_size} exceeds the {n} slices")
    images, labels = _gather_images(split.images), _gather_rows(split.labels, tf.int32)

    def make_batch(indices):
        return LabelledBatch(images(indices), labels(indices))

    if start_step is None:
        return tf.data.Dataset.range(n).batch(batch_size).map(make_batch).prefetch(tf.data.AUTOTUNE)
    ds = _index_stream(n, batch_size, seed, start_step).map(lambda _, idx: make_batch(idx),
                                                              num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def evaluation_masks(split: PreparedSplit, mask: MaskSpec) -> np.ndarray:
    """Fixed masks of a validation/test split: ``[1, H, W]`` (one mask) or ``[N, H, W]`` (seeded per slice)."""
    n, h, w = split.images.shape
    if not mask.per_sample:
        return mask.build((h, w))[None]
    return np.stack([mask.for_slice((h, w), i) for i in range(n)])


def evaluation_dataset(split: PreparedSplit, batch_size: int, masks: np.ndarray,
                       with_kspace: bool = False, maps: np.ndarray | None = None, regime: str = "magnitude",
                       phase_seed: int = 0, split_key: int = 2, phase_index: np.ndarray | None = None,
                       complex_images: bool = False) -> tf.data.Dataset:
    """Every slice of a split once, in order, without augmentation.

    ``masks`` is ``[1, H, W]`` or ``[N, H, W]`` from :func:`evaluation_masks` (built once by the caller).
    In the ``phase`` regime slice ``i`` gets the phase of ``(phase_seed, split_key, i)``
    (``split_key`` = 0, 1, 2 for train, val, test; ``phase_index[i]`` replaces ``i`` for a subset
    of a split, so its slices keep their phases).  A multi-coil split gives multi-coil batches
    (module doc; its simulation fixed the phase), with ``maps`` ``[1 or N, C, H, W]`` (default: the
    split's own) — e.g. maps estimated by ESPIRiT.
    """
    _check_regime(regime)
    masks = tf.constant(masks, tf.float32)
    n = split.images.shape[0]
    gather = _gather_images(split.images)
    if split.kspace is not None:
        maps = split.maps if maps is None else maps
        if maps is None:
            raise DaganError("this multi-coil split has no sensitivity maps of its own; estimate them (--maps espirit)")
        return _multicoil_dataset(split, batch_size, masks, maps, gather)

    phases = _phases(phase_seed, split_key, tuple(split.images.shape[1:]))
    index = tf.constant(np.arange(n) if phase_index is None else np.asarray(phase_index), tf.int64)

    def make_batch(indices):
        target = gather(indices)
        m = masks[0] if masks.shape[0] == 1 else tf.gather(masks, indices)
        out = _simulate(target, m, with_kspace, phases(tf.gather(index, indices)) if regime == "phase" else None,
                        complex_images)
        return out._replace(index=indices) if with_kspace else out

    ds = tf.data.Dataset.range(n).batch(batch_size).map(make_batch, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def _gather_rows(array: np.ndarray, dtype):
    """``indices -> array[indices]`` (rows of a memory-mapped array; a single row is broadcast)."""
    def gather(indices):
        rows = array[np.zeros_like(indices) if array.shape[0] == 1 else indices]
        return np.asarray(rows, dtype=dtype.as_numpy_dtype)

    return lambda indices: tf.ensure_shape(tf.numpy_function(gather, [indices], dtype), [None, *array.shape[1:]])


def _multicoil_batch(split: PreparedSplit, maps: np.ndarray, gather):
    """``(indices [B], masks [1 or B, H, W], key [2] or None) ->`` the :class:`RawBatch` of stored coil k-space
    (``key`` ``None`` for evaluation; :func:`finish_coils` makes its :class:`KSpaceBatch`)."""
    coil_kspace, coil_maps = _gather_rows(split.kspace, tf.complex64), _gather_rows(maps, tf.complex64)

    def raw_batch(indices, masks, key=None):
        b = tf.size(indices)
        return RawBatch(gather(indices), tf.broadcast_to(masks, [b, *masks.shape[1:]]),
                        None if key is None else tf.tile(key[None], [b, 1]),
                        coil_kspace=coil_kspace(indices), maps=coil_maps(indices))

    return raw_batch


def finish_coils(raw: RawBatch, key=None, augment: AugmentConfig | None = None) -> KSpaceBatch:
    """The multi-coil :class:`KSpaceBatch` of a :class:`RawBatch` of :func:`_multicoil_batch`.

    With ``augment`` (flips and rotations) the coil images ``ifft2c(k_c)``, the maps and the target move
    together (:func:`augment_geometry`, draws seeded by ``key [2]``) before the k-space is taken again and masked.
    """
    k, s, target, m = raw.coil_kspace, raw.maps, raw.target, raw.mask
    if augment is not None:
        k, s, target = _augment_coils(k, s, target, key, augment)
    k0 = k * tf.cast(m, tf.complex64)[:, None]
    combined = ks.sense_adjoint(k0, s)
    return KSpaceBatch(tf.abs(combined)[..., None], _channels(combined), target,
                       _channels(ks.sense_adjoint(k, s)), m, k0, s)


def _augment_coils(kspace: tf.Tensor, maps: tf.Tensor, target: tf.Tensor, key, augment: AugmentConfig):
    """The same flips and rotations of coil images (``kspace [B, C, H, W]`` in, k-space out), ``maps
    [B, C, H, W]`` and ``target [B, H, W, 1]``."""
    def planes(z):  # [B, C, H, W] complex -> [B, H, W, 2C]
        return tf.concat([tf.transpose(tf.math.real(z), [0, 2, 3, 1]), tf.transpose(tf.math.imag(z), [0, 2, 3, 1])],
                         axis=-1)

    def complex_of(x):  # [B, H, W, 2C] -> [B, C, H, W] complex
        re, im = tf.split(x, 2, axis=-1)
        return tf.complex(tf.transpose(re, [0, 3, 1, 2]), tf.transpose(im, [0, 3, 1, 2]))

    c2 = 2 * kspace.shape[1]
    moved = augment_geometry(tf.concat([planes(ks.ifft2c(kspace)), planes(maps), target], axis=-1), key, augment)
    return ks.fft2c(complex_of(moved[..., :c2])), complex_of(moved[..., c2:2 * c2]), moved[..., 2 * c2:]


def _multicoil_dataset(split: PreparedSplit, batch_size: int, masks: tf.Tensor, maps: np.ndarray, gather):
    raw_batch = _multicoil_batch(split, maps, gather)

    def batch(indices):
        raw = raw_batch(indices, masks if masks.shape[0] == 1 else tf.gather(masks, indices))
        return finish_coils(raw)._replace(index=indices)

    ds = tf.data.Dataset.range(split.images.shape[0]).batch(batch_size).map(batch)
    return ds.prefetch(tf.data.AUTOTUNE)
