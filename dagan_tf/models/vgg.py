"""Frozen VGG feature extractors for perceptual losses.

``VGGFeatures`` maps ``[N, H, W, 1]`` images in [0, 1] to features: bilinear
resize to ``input_size`` (none when ``None``) (TF1 legacy, no half-pixel centres, as the original),
×255, tiled to 3 channels, ImageNet mean subtracted (caffe preprocessing; for
grey images BGR and RGB orders coincide).  DAGAN's setting is VGG16 to
``block4_pool`` on 244×244 with 'same' max-pooling (16×16×512); Seitzer et al.'s is
VGG19 to ``block5_conv4`` (relu5_4) on the image's own size with valid pooling.

Weights: ``"imagenet"`` (Keras download), a local ``.h5`` path, or ``"random"``
(only for tests; logs a warning).  Nothing else is accepted.
"""
from __future__ import annotations

import logging
import os

import keras
import tensorflow as tf
from keras import layers

from dagan_tf.errors import DaganError

log = logging.getLogger(__name__)
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
ARCHITECTURES = {"vgg16": keras.applications.VGG16, "vgg19": keras.applications.VGG19}


def _load_backbone(arch: str, weights: str) -> keras.Model:
    if arch not in ARCHITECTURES:
        raise DaganError(f"unknown VGG architecture {arch!r}; valid: {', '.join(ARCHITECTURES)}")
    if weights == "random":
        log.warning("VGG perceptual features use RANDOM weights (vgg.weights=random): for tests only")
        source = None
    elif weights == "imagenet":
        source = "imagenet"
    elif os.path.isfile(os.path.expanduser(weights)):
        source = os.path.expanduser(weights)
    else:
        raise DaganError(f"vgg.weights={weights!r} is neither 'imagenet' nor an existing weights file; "
                         "pass a local .weights.h5 path with --set vgg.weights=PATH")
    try:
        return ARCHITECTURES[arch](weights=source, include_top=False, input_shape=(None, None, 3))
    except Exception as exc:  # download failures surface as several exception types
        raise DaganError(f"could not load {arch} weights from {weights!r} ({type(exc).__name__}: {exc}); "
                         "without network pass a local file with --set vgg.weights=PATH") from None


def build_vgg_features(arch: str = "vgg16", layer: str = "block4_pool", weights: str = "imagenet",
                       same_pooling: bool = True) -> keras.Model:
    """Frozen VGG ``[N, S, S, 3]`` (caffe-preprocessed) -> features at ``layer``.

    ``same_pooling`` rebuilds the max-pools with 'same' padding (DAGAN: 244² -> 16² at block4_pool).
    """
    backbone = _load_backbone(arch, weights)
    names = [each.name for each in backbone.layers]
    if layer not in names:
        raise DaganError(f"{arch} has no layer {layer!r}; valid: {', '.join(names[1:])}")
    inputs = keras.Input((None, None, 3))
    x = inputs
    for layer_ in backbone.layers[1:]:
        if isinstance(layer_, layers.MaxPooling2D) and same_pooling:
            x = layers.MaxPooling2D(2, 2, padding="same", name=layer_.name)(x)
        else:
            x = layer_(x)
        if layer_.name == layer:
            break
    model = keras.Model(inputs, x, name=f"{arch}_{layer}")
    model.trainable = False
    return model


def legacy_bilinear_resize(images: tf.Tensor, size: int) -> tf.Tensor:
    """TF1 ``resize_bilinear`` (align_corners=False, half_pixel_centers=False), as the original DAGAN."""
    return tf.raw_ops.ResizeBilinear(images=images, size=[size, size], align_corners=False, half_pixel_centers=False)


def dagan_target_prepro(images: tf.Tensor) -> tf.Tensor:
    """The original's target branch: per-image min-max stretch to 0..255 and 8-bit quantisation, back to [0, 1]."""
    lo = tf.reduce_min(images, axis=[1, 2, 3], keepdims=True)
    hi = tf.reduce_max(images, axis=[1, 2, 3], keepdims=True)
    return tf.round((images - lo) / tf.maximum(hi - lo, 1e-12) * 255.0) / 255.0


class VGGFeatures:
    """Callable ``[N, H, W, 1]`` in [0, 1] -> VGG features (float32)."""

    def __init__(self, arch="vgg16", layer="block4_pool", weights="imagenet", input_size: int | None = 244,
                 same_pooling=True, feature_scale: float = 1.0):
        self.model = build_vgg_features(arch, layer, weights, same_pooling)
        self.input_size = input_size  # None: the images' own size (no resize)
        self.feature_scale = feature_scale  # SRGAN rescales the features by 1/12.75

    @classmethod
    def from_recipe(cls, vgg: dict) -> "VGGFeatures":
        """The extractor of a recipe's ``vgg`` section."""
        return cls(vgg["network"], vgg["layer"], str(vgg["weights"]), vgg["input_size"], vgg["same_pooling"],
                   vgg.get("feature_scale", 1.0))

    def __call__(self, images: tf.Tensor) -> tf.Tensor:
        x = tf.cast(images, tf.float32)
        x = (x if self.input_size is None else legacy_bilinear_resize(x, self.input_size)) * 255.0
        x = tf.tile(x, [1, 1, 1, 3]) - tf.constant(CAFFE_MEAN_BGR)
        return tf.cast(self.model(x, training=False), tf.float32) * self.feature_scale
