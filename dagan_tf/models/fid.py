"""The standard FID network: TensorFlow's Inception-v3 graph of 2015-12-05, pool3 features, as a Keras model.

FID as papers report it uses this one network (Keras' ``InceptionV3`` is a different one).  Its
weights come from a ``.npz`` of the 376 tensors keyed by module path (PyTorch layout, as
``../shared/weights/fid_inception/fid_inception_2015_12_05.npz`` or ``scripts/convert_fid_weights.py``
writes it); each convolution is conv (no bias) → batch norm in inference form (mean, var, beta, no
scale, ε = 1e-3) → ReLU, folded here into one biased convolution.  Paddings are the reference's
(explicit zero padding); max pools 3×3/2 (valid) between stages and in the reduction blocks; the
average pools of the branches exclude the padding from the count ('same' pooling in TF);
the last block's pool branch is a max pool; pool3 is the 8×8 average → 2048 features.

:class:`FIDFeatures` maps ``[N, H, W, 1]`` images in [0, 1] (or 3 channels) to ``[N, 2048]``: grey
tiled to 3 channels, resized bilinearly (TF, no antialiasing) to 299², mapped linearly from
[0, 1] to [−1, 0.9921875] (``x·255/128 − 1``) as the reference pipeline.
"""
from __future__ import annotations

import hashlib
import os

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from dagan_tf.errors import DaganError

INPUT_SIZE = 299
BN_EPSILON = 1e-3
# branch structure of the mixed blocks: (branch, [conv names]) in concatenation order; "pool:avg"/"pool:max"
# stands for a 3×3 pooling (stride 1, 'same') before the branch's convolutions, "reduce" for a 3×3/2 max pool
BLOCK_A = [("conv", ["conv"]), ("tower", ["tower.conv", "tower.conv_1"]),
           ("tower_1", ["tower_1.conv", "tower_1.conv_1", "tower_1.conv_2"]), ("pool:avg", ["tower_2.conv"])]
BLOCK_B = [("conv", ["conv"]), ("tower", ["tower.conv", "tower.conv_1", "tower.conv_2"]), ("reduce", [])]
BLOCK_C = [("conv", ["conv"]), ("tower", ["tower.conv", "tower.conv_1", "tower.conv_2"]),
           ("tower_1", ["tower_1.conv", "tower_1.conv_1", "tower_1.conv_2", "tower_1.conv_3", "tower_1.conv_4"]),
           ("pool:avg", ["tower_2.conv"])]
BLOCK_D = [("tower", ["tower.conv", "tower.conv_1"]),
           ("tower_1", ["tower_1.conv", "tower_1.conv_1", "tower_1.conv_2", "tower_1.conv_3"]), ("reduce", [])]
BLOCKS = {"mixed": BLOCK_A, "mixed_1": BLOCK_A, "mixed_2": BLOCK_A, "mixed_3": BLOCK_B, "mixed_4": BLOCK_C,
          "mixed_5": BLOCK_C, "mixed_6": BLOCK_C, "mixed_7": BLOCK_C, "mixed_8": BLOCK_D, "mixed_9": "E:avg",
          "mixed_10": "E:max"}


# the convolutions without 'same'-size padding: (stride, (ph, pw)); all others are stride 1 with padding
# k // 2 per axis (the reference's fid_inception_convs.json, checked by the tests)
VALID_CONVS = {"conv": 2, "conv_1": 1, "conv_3": 1, "conv_4": 1, "mixed_3.conv": 2, "mixed_3.tower.conv_2": 2,
               "mixed_8.tower.conv_1": 2, "mixed_8.tower_1.conv_3": 2}


def conv_geometry(name: str, kernel: tuple[int, int]) -> tuple[int, tuple[int, int]]:
    """``(stride, (ph, pw))`` of convolution ``name`` with kernel ``(kh, kw)``."""
    if name in VALID_CONVS:
        return VALID_CONVS[name], (0, 0)
    return 1, (kernel[0] // 2, kernel[1] // 2)


def _conv(x, tensors: dict, name: str):
    """Conv → inference BN (folded into the kernel and a bias) → ReLU of module ``name``, with the
    reference's explicit zero padding."""
    weight = tensors[f"{name}.weight"]  # [out, in, kh, kw]
    out, _, kh, kw = weight.shape
    stride, pad = conv_geometry(name, (kh, kw))
    scale = 1.0 / np.sqrt(tensors[f"{name}.var"] + BN_EPSILON)
    kernel = np.transpose(weight, (2, 3, 1, 0)) * scale
    bias = tensors[f"{name}.beta"] - tensors[f"{name}.mean"] * scale
    if any(pad):
        x = layers.ZeroPadding2D(((pad[0], pad[0]), (pad[1], pad[1])), name=f"{name}_pad")(x)
    conv = layers.Conv2D(out, (kh, kw), strides=stride, padding="valid", activation="relu", name=name)
    y = conv(x)
    conv.set_weights([kernel.astype(np.float32), bias.astype(np.float32)])
    return y


def _block_e(x, tensors, prefix: str, pool: str):
    conv = lambda t, n: _conv(t, tensors, f"{prefix}.{n}")  # noqa: E731
    a = conv(x, "tower_conv")
    b = conv(conv(x, "tower_1_conv"), "tower_1_conv_1")
    pooled = (layers.AveragePooling2D if pool == "avg" else layers.MaxPooling2D)(
        3, 1, padding="same", name=f"{prefix}_pool")(x)
    return layers.Concatenate(name=f"{prefix}_concat")([
        conv(x, "conv"), conv(a, "tower_mixed_conv"), conv(a, "tower_mixed_conv_1"),
        conv(b, "tower_1_mixed_conv"), conv(b, "tower_1_mixed_conv_1"), conv(pooled, "tower_2_conv")])


def _block(x, tensors, prefix: str, branches):
    outputs = []
    for kind, names in branches:
        y = x
        if kind == "reduce":
            y = layers.MaxPooling2D(3, 2, name=f"{prefix}_reduce")(y)
        elif kind.startswith("pool:"):
            y = layers.AveragePooling2D(3, 1, padding="same", name=f"{prefix}_pool")(y)
        for name in names:
            y = _conv(y, tensors, f"{prefix}.{name}")
        outputs.append(y)
    return layers.Concatenate(name=f"{prefix}_concat")(outputs)


def load_fid_tensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The network's tensors from ``path`` (npz), keyed by module path without the ``net.layers.`` prefix."""
    path = os.path.expanduser(str(path))
    if not os.path.isfile(path):
        raise DaganError(f"FID weights not found: {path} (see scripts/convert_fid_weights.py)")
    try:
        with np.load(path, allow_pickle=False) as data:
            tensors = {k.removeprefix("net.layers."): np.asarray(data[k], np.float32) for k in data.files}
    except (OSError, ValueError) as exc:
        raise DaganError(f"cannot read FID weights {path}: {exc}") from None
    if "conv.weight" not in tensors or "mixed_10.conv.weight" not in tensors:
        raise DaganError(f"{path} does not hold the FID Inception tensors (net.layers.conv.weight, ...)")
    return tensors


def build_fid_inception(tensors: dict) -> keras.Model:
    """pool3 features ``[N, 299, 299, 3]`` in [−1, 1) -> ``[N, 2048]`` (float32) from :func:`load_fid_tensors`."""
    inputs = keras.Input((INPUT_SIZE, INPUT_SIZE, 3), name="image")
    x = _conv(inputs, tensors, "conv")
    x = _conv(x, tensors, "conv_1")
    x = _conv(x, tensors, "conv_2")
    x = layers.MaxPooling2D(3, 2, name="pool0")(x)
    x = _conv(x, tensors, "conv_3")
    x = _conv(x, tensors, "conv_4")
    x = layers.MaxPooling2D(3, 2, name="pool1")(x)
    for prefix, kind in BLOCKS.items():
        x = _block_e(x, tensors, prefix, kind[2:]) if isinstance(kind, str) else _block(x, tensors, prefix, kind)
    features = layers.GlobalAveragePooling2D(name="pool3")(x)
    return keras.Model(inputs, features, name="fid_inception")


class FIDFeatures:
    """``[N, H, W, 1 or 3]`` images in [0, 1] -> pool3 features ``[N, 2048]`` (module doc), in batches."""

    def __init__(self, weights: str | os.PathLike, batch_size: int = 16):
        previous = keras.mixed_precision.global_policy()
        keras.mixed_precision.set_global_policy("float32")
        try:
            self.model = build_fid_inception(load_fid_tensors(weights))
        finally:
            keras.mixed_precision.set_global_policy(previous)
        self.batch_size = batch_size
        self._run = tf.function(lambda x: self.model(x, training=False), reduce_retracing=True)
        self._cache: dict[str, np.ndarray] = {}

    @staticmethod
    def prepare(images: tf.Tensor) -> tf.Tensor:
        """Tile grey to 3 channels, resize bilinearly to 299² (no antialiasing), map [0, 1] to [−1, 0.9921875]."""
        x = tf.cast(images, tf.float32)
        if x.shape[-1] == 1:
            x = tf.tile(x, [1, 1, 1, 3])
        if x.shape[1:3] != (INPUT_SIZE, INPUT_SIZE):
            x = tf.image.resize(x, (INPUT_SIZE, INPUT_SIZE), method="bilinear")
        return x * (255.0 / 128.0) - 1.0

    def __call__(self, images, cache: bool = False) -> np.ndarray:
        """Features of ``images``; with ``cache`` the features of the same pixels are computed once
        (e.g. the ground truth of a split scored in two regimes)."""
        key = hashlib.sha1(np.ascontiguousarray(images, np.float32).tobytes()).hexdigest() if cache else None
        if key is not None and key in self._cache:
            return self._cache[key]
        out = [self._run(self.prepare(images[i:i + self.batch_size])).numpy()
               for i in range(0, len(images), self.batch_size)]
        features = np.concatenate(out) if out else np.zeros((0, 2048), np.float32)
        if key is not None:
            self._cache[key] = features
        return features
