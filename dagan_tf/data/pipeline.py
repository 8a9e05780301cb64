"""tf.data pipelines from a prepared directory.

Training batches are a pure function of ``(seed, epoch, step)``: the epoch's
order is a stateless shuffle seeded by ``(seed, epoch)`` and each batch's
augmentation and masks are seeded by ``(seed, global_step)``.  Resuming at an
epoch boundary therefore reproduces the uninterrupted run exactly.

Elements are ``(zero_filled, target)``, both ``[B, H, W, 1]`` float32 (target in
[0, 1], zero-filled magnitude not clipped), or with ``with_kspace=True`` a dict
with ``zero_filled``, ``target``, ``mask [B, H, W]`` and ``kspace [B, H, W]``
(complex64, centred, undersampled).  Evaluation batches of a multi-coil split
carry the coil k-space ``kspace [B, C, H, W]`` (undersampled), the sensitivity
``maps [B, C, H, W]`` and the SENSE-combined zero-filled magnitude
``|Σ_c conj(S_c)·ifft2c(k_c)|``.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from dagan_tf import kspace as ks
from dagan_tf.data.augment import AugmentConfig, augment_batch
from dagan_tf.data.prepare import PreparedSplit
from dagan_tf.errors import DaganError
from dagan_tf.masks import MaskSpec


def _simulate(target: tf.Tensor, mask: tf.Tensor, with_kspace: bool):
    k, zf = ks.undersample(target[..., 0], mask)
    zero_filled = tf.abs(zf)[..., None]
    if not with_kspace:
        return zero_filled, target
    masks = tf.broadcast_to(mask, tf.shape(target)[:3])
    return {"zero_filled": zero_filled, "target": target, "mask": masks, "kspace": k}


def _gather_images(images: np.ndarray):
    def gather(indices):
        return np.asarray(images[indices], dtype=np.float32)

    def fn(indices):
        out = tf.numpy_function(gather, [indices], tf.float32)
        return tf.ensure_shape(out, [None, images.shape[1], images.shape[2]])[..., None]

    return fn


def training_dataset(split: PreparedSplit, batch_size: int, mask: MaskSpec, seed: int = 0,
                     start_step: int = 0, augment: AugmentConfig | None = AugmentConfig(),
                     with_kspace: bool = False) -> tuple[tf.data.Dataset, int]:
    """Endless training batches from global step ``start_step``; returns ``(dataset, batches_per_pass)``.

    Each pass over the data has ``N // batch_size`` full batches; batch ``s`` of the
    stream is the same whatever ``start_step`` the stream began at.  ``mask.per_sample`` draws a
    fresh seeded mask per image (numpy; costly for ``poisson2d``).  A multi-coil split gives
    multi-coil batch dicts (module doc) of its stored k-space, without augmentation.
    """
    n, h, w = split.images.shape
    steps = n // batch_size
    if steps == 0:
        raise DaganError(f"batch size {batch_size} exceeds the {n} training slices")
    fixed_mask = None if mask.per_sample else tf.constant(mask.build((h, w)))

    def epoch_batches(epoch):
        perm = tf.random.experimental.stateless_shuffle(tf.range(n, dtype=tf.int64), seed=[seed, epoch])
        batches = tf.data.Dataset.from_tensor_slices(perm[: steps * batch_size]).batch(batch_size)
        return batches.enumerate().map(lambda i, idx: (epoch * steps + i, idx))

    def per_sample_masks(step):
        def draw(step_value):
            rng = np.random.SeedSequence([seed, int(step_value)]).generate_state(batch_size)
            return np.stack([mask.build((h, w), int(s)) for s in rng]).astype(np.float32)
        return tf.ensure_shape(tf.numpy_function(draw, [step], tf.float32), [batch_size, h, w])

    gather = _gather_images(split.images)
    if split.kspace is not None:
        if augment is not None:
            raise DaganError("augmentation of stored multi-coil k-space is not supported; set data.augment false")
        if split.maps is None:
            raise DaganError("this multi-coil split has no sensitivity maps of its own; estimate them first")
        batch_of = _multicoil_batch(split, split.maps, gather)

    def make_batch(step, indices):
        if split.kspace is not None:
            return batch_of(indices, per_sample_masks(step) if fixed_mask is None else fixed_mask[None])
        target = gather(indices)
        if augment is not None:
            target = augment_batch(target, tf.stack([tf.constant(seed, tf.int64), step]), augment)
            target = tf.ensure_shape(target, [batch_size, h, w, 1])
        m = per_sample_masks(step) if fixed_mask is None else fixed_mask
        return _simulate(target, m, with_kspace)

    passes = tf.data.Dataset.counter(start_step // steps).flat_map(epoch_batches).skip(start_step % steps)
    ds = passes.map(make_batch, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE), steps


def evaluation_masks(split: PreparedSplit, mask: MaskSpec) -> np.ndarray:
    """Fixed masks of a validation/test split: ``[1, H, W]`` (one mask) or ``[N, H, W]`` (seeded per slice)."""
    n, h, w = split.images.shape
    if not mask.per_sample:
        return mask.build((h, w))[None]
    return np.stack([mask.for_slice((h, w), i) for i in range(n)])


def evaluation_dataset(split: PreparedSplit, batch_size: int, masks: np.ndarray,
                       with_kspace: bool = False, maps: np.ndarray | None = None) -> tf.data.Dataset:
    """Every slice of a split once, in order, without augmentation.

    ``masks`` is ``[1, H, W]`` or ``[N, H, W]`` from :func:`evaluation_masks` (built once by the caller).
    A multi-coil split gives multi-coil batches (module doc), with ``maps`` ``[1 or N, C, H, W]``
    (default: the split's own) — e.g. maps estimated by ESPIRiT.
    """
    masks = tf.constant(masks, tf.float32)
    n = split.images.shape[0]
    gather = _gather_images(split.images)
    if split.kspace is not None:
        maps = split.maps if maps is None else maps
        if maps is None:
            raise DaganError("this multi-coil split has no sensitivity maps of its own; estimate them (--maps espirit)")
        return _multicoil_dataset(split, batch_size, masks, maps, gather)

    def make_batch(indices):
        target = gather(indices)
        m = masks[0] if masks.shape[0] == 1 else tf.gather(masks, indices)
        return _simulate(target, m, with_kspace)

    ds = tf.data.Dataset.range(n).batch(batch_size).map(make_batch, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def _gather_rows(array: np.ndarray, dtype):
    """``indices -> array[indices]`` (rows of a memory-mapped array; a single row is broadcast)."""
    def gather(indices):
        rows = array[np.zeros_like(indices) if array.shape[0] == 1 else indices]
        return np.asarray(rows, dtype=dtype.as_numpy_dtype)

    return lambda indices: tf.ensure_shape(tf.numpy_function(gather, [indices], dtype), [None, *array.shape[1:]])


def _multicoil_batch(split: PreparedSplit, maps: np.ndarray, gather):
    """``(indices [B], masks [1 or B, H, W]) -> batch dict`` of stored coil k-space (module doc)."""
    coil_kspace, coil_maps = _gather_rows(split.kspace, tf.complex64), _gather_rows(maps, tf.complex64)

    def make_batch(indices, masks):
        m = tf.broadcast_to(masks, [tf.size(indices), *masks.shape[1:]])
        k0 = coil_kspace(indices) * tf.cast(m, tf.complex64)[:, None]
        s = coil_maps(indices)
        zero_filled = tf.abs(ks.sense_adjoint(k0, s))[..., None]
        return {"zero_filled": zero_filled, "target": gather(indices), "mask": m, "kspace": k0, "maps": s}

    return make_batch


def _multicoil_dataset(split: PreparedSplit, batch_size: int, masks: tf.Tensor, maps: np.ndarray, gather):
    make_batch = _multicoil_batch(split, maps, gather)

    def batch(indices):
        return make_batch(indices, masks if masks.shape[0] == 1 else tf.gather(masks, indices))

    ds = tf.data.Dataset.range(split.images.shape[0]).batch(batch_size).map(batch)
    return ds.prefetch(tf.data.AUTOTUNE)
