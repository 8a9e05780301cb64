"""In-graph, per-image augmentation of ``[B, H, W, 1]`` images in [0, 1].

The original DAGAN order (TensorLayer ``distort_img``): left/right flip (p=0.5),
elastic distortion (α=765, σ=25.5 on 256²; scaled with the image side),
rotation ±10°, shift ±10 %, zoom 0.9–1.1 (independent x/y, as the original),
gamma 0.95–1.05.  Out-of-image samples are 0.

All randomness is *stateless*: a ``seed`` tensor ``[2]`` fixes every draw, so a
batch is a pure function of ``(seed, images)`` — which is what makes resumed
training reproduce uninterrupted training exactly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import tensorflow as tf


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation ranges; ``elastic_per_image=False`` reproduces the original's one field per batch."""

    flip: bool = True
    rotation_deg: float = 10.0
    shift: float = 0.1
    zoom: tuple[float, float] = (0.9, 1.1)
    isotropic_zoom: bool = False
    gamma: tuple[float, float] = (0.95, 1.05)
    elastic_alpha: float = 765.0
    elastic_sigma: float = 25.5
    elastic_reference_size: int = 256
    elastic_per_image: bool = True


def gaussian_blur_matrix(n: int, sigma: float) -> np.ndarray:
    """``[n, n]`` matrix ``G`` with ``G @ v == scipy.ndimage.gaussian_filter1d(v, sigma, mode='constant')``."""
    radius = int(4.0 * sigma + 0.5)  # scipy's truncate=4.0
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    offsets = np.arange(n)[None, :] - np.arange(n)[:, None]  # j - i
    inside = np.abs(offsets) <= radius
    return np.where(inside, taps[np.clip(offsets + radius, 0, 2 * radius)], 0.0).astype(np.float32)


def elastic_displacements(seed, batch: int, height: int, width: int, alpha: float, sigma: float,
                          per_image: bool = True) -> tf.Tensor:
    """Smooth random displacement fields ``[B, H, W, 2]`` (dy, dx) in pixels.

    Each field is ``gaussian_filter(U(-1, 1), sigma, mode='constant') * alpha``,
    with independent noise for dy and dx (and per image unless ``per_image`` is
    False).  The blur is two matrix products with banded Gaussian matrices.
    """
    n_fields = batch if per_image else 1
    noise = tf.random.stateless_uniform([n_fields, 2, height, width], seed, -1.0, 1.0)
    gh = tf.constant(gaussian_blur_matrix(height, sigma))
    gw = tf.constant(gaussian_blur_matrix(width, sigma))
    fields = tf.einsum("hk,nckw,vw->nchv", gh, noise, gw) * alpha
    fields = tf.transpose(fields, [0, 2, 3, 1])
    return tf.broadcast_to(fields, [batch, height, width, 2])


def bilinear_sample(images: tf.Tensor, coords: tf.Tensor) -> tf.Tensor:
    """Sample ``[B, H, W, C]`` images at ``coords [B, H', W', 2]`` (row, col); 0 outside.

    Equals ``scipy.ndimage.map_coordinates(order=1, mode='constant')`` inside the image.
    """
    shape = tf.shape(images)
    b, h, w = shape[0], shape[1], shape[2]
    y, x = coords[..., 0], coords[..., 1]
    y0, x0 = tf.floor(y), tf.floor(x)
    wy, wx = (y - y0)[..., None], (x - x0)[..., None]
    y0, x0 = tf.cast(y0, tf.int32), tf.cast(x0, tf.int32)
    batch_idx = tf.broadcast_to(tf.range(b)[:, None, None], tf.shape(y0))

    def tap(yi, xi):
        valid = (yi >= 0) & (yi < h) & (xi >= 0) & (xi < w)
        idx = tf.stack([batch_idx, tf.clip_by_value(yi, 0, h - 1), tf.clip_by_value(xi, 0, w - 1)], -1)
        return tf.gather_nd(images, idx) * tf.cast(valid, images.dtype)[..., None]

    top = tap(y0, x0) * (1 - wx) + tap(y0, x0 + 1) * wx
    bottom = tap(y0 + 1, x0) * (1 - wx) + tap(y0 + 1, x0 + 1) * wx
    return top * (1 - wy) + bottom * wy


def elastic_transform(images: tf.Tensor, displacements: tf.Tensor) -> tf.Tensor:
    """Warp ``[B, H, W, C]`` images: ``out[i, j] = in[i + dy, j + dx]`` (bilinear, 0 outside)."""
    shape = tf.shape(images)
    grid = tf.stack(tf.meshgrid(tf.range(shape[1]), tf.range(shape[2]), indexing="ij"), -1)
    coords = tf.cast(grid, tf.float32)[None] + displacements
    return bilinear_sample(images, coords)


def _affine_transforms(seed, batch: int, height: int, width: int, cfg: AugmentConfig) -> tf.Tensor:
    """Per-image projective transforms ``[B, 8]`` (output -> input coords) for rotation, shift, zoom."""
    draws = tf.random.stateless_uniform([batch, 5], seed, -1.0, 1.0)
    theta = draws[:, 0] * cfg.rotation_deg * math.pi / 180.0
    zlo, zhi = cfg.zoom
    zx = zlo + (draws[:, 1] + 1) / 2 * (zhi - zlo)
    zy = zx if cfg.isotropic_zoom else zlo + (draws[:, 2] + 1) / 2 * (zhi - zlo)
    tx, ty = draws[:, 3] * cfg.shift * width, draws[:, 4] * cfg.shift * height
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    cos, sin = tf.cos(theta), tf.sin(theta)
    # input = R · diag(1/zx, 1/zy) · (out - c) + c - t
    a0, a1 = cos / zx, -sin / zy
    b0, b1 = sin / zx, cos / zy
    a2 = cx - a0 * cx - a1 * cy - tx
    b2 = cy - b0 * cx - b1 * cy - ty
    zeros = tf.zeros_like(a0)
    return tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)


def flip_rotate(max_rotation_deg: float) -> AugmentConfig:
    """Random left/right flips and rotations up to ``max_rotation_deg``, nothing else (cWGAN-AGB's: 20°)."""
    return AugmentConfig(rotation_deg=max_rotation_deg, shift=0.0, zoom=(1.0, 1.0), gamma=(1.0, 1.0),
                         elastic_alpha=0.0)


def augment_batch(images: tf.Tensor, seed, cfg: AugmentConfig = AugmentConfig()) -> tf.Tensor:
    """Augment ``[B, H, W, 1]`` float32 images in [0, 1] with stateless ``seed [2]``; same shape, in [0, 1]."""
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 4)
    x = augment_geometry(images, seed, cfg)
    glo, ghi = cfg.gamma
    g = tf.random.stateless_uniform([tf.shape(images)[0], 1, 1, 1], seeds[3], glo, ghi)
    return tf.pow(tf.clip_by_value(x, 0.0, 1.0), g)


def augment_geometry(images: tf.Tensor, seed, cfg: AugmentConfig = AugmentConfig()) -> tf.Tensor:
    """The flip, elastic and affine part of :func:`augment_batch` (the same draws for the same ``seed``) on
    ``[B, H, W, C]`` float32 images of any values and channels, e.g. coil images and maps together."""
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 4)
    shape = tf.shape(images)
    b, h, w = shape[0], images.shape[1], images.shape[2]
    x = images
    if cfg.flip:
        flip = tf.random.stateless_uniform([b, 1, 1, 1], seeds[0]) < 0.5
        x = tf.where(flip, tf.reverse(x, axis=[2]), x)
    if cfg.elastic_alpha > 0:
        scale = h / cfg.elastic_reference_size
        disp = elastic_displacements(seeds[1], b, h, w, cfg.elastic_alpha * scale, cfg.elastic_sigma * scale,
                                     cfg.elastic_per_image)
        x = elastic_transform(x, disp)
    transforms = _affine_transforms(seeds[2], b, h, w, cfg)
    x = tf.raw_ops.ImageProjectiveTransformV3(
        images=x, transforms=transforms, output_shape=tf.shape(x)[1:3], fill_value=0.0,
        interpolation="BILINEAR", fill_mode="CONSTANT")
    return x
