"""Pieces every trainer shares: magnitudes of network outputs, the BCE on logits, validation quality metrics."""
from __future__ import annotations

import tensorflow as tf

from dagan_tf import metrics as quality

QUALITY = ("nmse", "psnr", "ssim")


def magnitude(images: tf.Tensor) -> tf.Tensor:
    """``[B, H, W, 1]`` magnitude of ``[B, H, W, 1]`` magnitudes (unchanged) or ``[B, H, W, 2]`` real/imaginary
    channels (``√(re² + im² + 1e-12)``: finite gradients at 0), float32."""
    images = tf.cast(images, tf.float32)
    if images.shape[-1] == 1:
        return images
    return tf.sqrt(tf.reduce_sum(tf.square(images), axis=-1, keepdims=True) + 1e-12)


def bce_logits(logits: tf.Tensor, label: float) -> tf.Tensor:
    """Mean sigmoid cross-entropy of ``logits`` (any shape) against the constant ``label``."""
    logits = tf.cast(logits, tf.float32)
    return tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(tf.fill(tf.shape(logits), label), logits))


def quality_metrics(trackers: dict, target: tf.Tensor, output: tf.Tensor) -> dict:
    """Update the ``nmse``/``psnr``/``ssim`` mean trackers with magnitudes ``[B, H, W, 1]`` (per-batch data
    range, :mod:`dagan_tf.metrics`); their results."""
    for name, fn in zip(QUALITY, (quality.nmse, quality.psnr, quality.ssim)):
        trackers[name].update_state(fn(target, output))
    return {name: trackers[name].result() for name in QUALITY}
