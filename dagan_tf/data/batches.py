"""The batch types of the tf.data pipelines (:mod:`dagan_tf.data.pipeline`).

Each is a ``NamedTuple`` of tensors (tf.data, ``tf.function`` and distribution strategies carry them as they
carry tuples); a field that does not apply to a batch is ``None``.  Images lie on [0, 1] (the target's
magnitude; a zero-filled magnitude is not clipped).
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import tensorflow as tf


class ImagePair(NamedTuple):
    """A pair of images ``[B, H, W, C]`` float32: ``C`` = 1 (magnitudes) or 2 (real/imaginary channels)."""
    zero_filled: tf.Tensor
    target: tf.Tensor


class KSpaceBatch(NamedTuple):
    """Undersampled k-space with its images.

    - ``zero_filled`` ``[B, H, W, 1]``: the zero-filled magnitude (multi-coil: of the SENSE combination);
    - ``zero_filled_complex``, ``target_complex`` ``[B, H, W, 2]``: real/imaginary channels of the zero-filled and
      the fully sampled complex image;
    - ``target`` ``[B, H, W, 1]``: the fully sampled magnitude;
    - ``mask`` ``[B, H, W]`` float32 {0, 1};
    - ``kspace``: the undersampled centred k-space, complex64 ``[B, H, W]`` (single-coil) or ``[B, C, H, W]``;
    - ``maps``: the coil sensitivities ``[B, C, H, W]`` complex64 (multi-coil), else ``None``;
    - ``index``: the slice numbers ``[B]`` int64 of an evaluation batch, else ``None``.
    """
    zero_filled: tf.Tensor
    zero_filled_complex: tf.Tensor
    target: tf.Tensor
    target_complex: tf.Tensor
    mask: tf.Tensor
    kspace: tf.Tensor
    maps: tf.Tensor | None = None
    index: tf.Tensor | None = None


class LabelledBatch(NamedTuple):
    """Fully sampled ``images`` ``[B, H, W, 1]`` float32 on [0, 1] and their label maps ``labels`` ``[B, H, W]``
    int32 (the segmenter's batches)."""
    images: tf.Tensor
    labels: tf.Tensor


class RawBatch(NamedTuple):
    """A training batch before augmentation and undersampling (the host's stage of a two-stage pipeline).

    ``target`` ``[B, H, W, 1]``, ``mask`` ``[B, H, W]``, ``key`` ``[B, 2]`` int64 (rows ``(seed, step)``: the
    draws of the second stage); ``phase`` ``[B, H, W]`` in the phase regime; multi-coil: the fully sampled
    ``coil_kspace`` and ``maps`` ``[B, C, H, W]`` complex64.
    """
    target: tf.Tensor
    mask: tf.Tensor
    key: tf.Tensor
    phase: tf.Tensor | None = None
    coil_kspace: tf.Tensor | None = None
    maps: tf.Tensor | None = None


Batch = ImagePair | KSpaceBatch
Reconstructor = Callable[[KSpaceBatch], tf.Tensor]  # an evaluation batch -> magnitudes [B, H, W, 1]
