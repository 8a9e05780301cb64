"""The SRGAN-style networks of the hybrid-loss thesis (chapters 3–4), without upsampling.

Generator (:func:`build_resnet_generator`): a 9×9 convolution (64 filters) + PReLU; ``blocks``
(B = 16) identical residual blocks (3×3 conv → BN → PReLU → 3×3 conv → BN, identity skip); a
3×3 conv + BN with the long skip from the first layer; a final 9×9 convolution to the output
channels and tanh (SRGAN's output activation; the thesis is silent).  Same size in and out, any
size (fully convolutional: trained on 96² patches, run on whole slices).  Like the DAGAN U-Net
its public interface is in [0, 1] (magnitude) and it works in [−1, 1] inside; ``refine`` gives
``ramp(G(x) + x)`` (the thesis mentions the refinement connection; off by default).  PReLU has
one slope per channel, as SRGAN.  ``zero_init_output`` starts the last convolution at zero
(ours; the texts are silent), so with ``refine`` the untrained network returns its input exactly:
the default initialisation of the 9×9 output convolution saturates the tanh, and short runs spend
their budget undoing that noise.

Discriminator (:func:`build_srgan_discriminator`): eight 3×3 convolutions 64, 64, 128, 128,
256, 256, 512, 512 (stride 2 on every second one, SRGAN's pattern), leaky ReLU 0.2, BN after
all but the first, then **global average pooling** (so both 96² patches and whole slices
fit; SRGAN flattens a fixed 6×6 map), dense 1024 → leaky ReLU → dense 1 (logit).
"""
from __future__ import annotations

import keras
from keras import layers

from dagan_tf.models.dagan import Ramp, scaled_filters
from dagan_tf.models.layers import FusedBatchNorm, LeakyReLU

DISCRIMINATOR_FILTERS = (64, 64, 128, 128, 256, 256, 512, 512)


def _bn(name: str) -> FusedBatchNorm:
    return FusedBatchNorm(momentum=0.9, epsilon=1e-5, name=name)


def _prelu(name: str) -> layers.PReLU:
    return layers.PReLU(alpha_initializer=keras.initializers.Constant(0.25), shared_axes=[1, 2], name=name)


def build_resnet_generator(image_size: int | None = None, width: float = 1.0, blocks: int = 16,
                           refine: bool = False, channels: int = 1, zero_init_output: bool = False,
                           name: str = "generator") -> keras.Model:
    """SRGAN ResNet ``[N, S, S, channels] -> [N, S, S, channels]`` (module doc); ``image_size=None``: any size."""
    if channels not in (1, 2):
        raise ValueError(f"channels must be 1 (magnitude) or 2 (complex), got {channels}")
    filters = scaled_filters(64, width)
    inputs = keras.Input((image_size, image_size, channels), name="zero_filled")
    x_in = layers.Rescaling(2.0, offset=-1.0, name="to_signed")(inputs) if channels == 1 else inputs
    first = _prelu("first_prelu")(layers.Conv2D(filters, 9, padding="same", name="first")(x_in))
    x = first
    for b in range(blocks):
        y = _prelu(f"res{b}_prelu")(_bn(f"res{b}_bn0")(layers.Conv2D(filters, 3, padding="same",
                                                                      name=f"res{b}_conv0")(x)))
        y = _bn(f"res{b}_bn1")(layers.Conv2D(filters, 3, padding="same", name=f"res{b}_conv1")(y))
        x = layers.Add(name=f"res{b}_add")([x, y])
    x = _bn("trunk_bn")(layers.Conv2D(filters, 3, padding="same", name="trunk_conv")(x))
    x = layers.Add(name="long_skip")([first, x])
    x = layers.Conv2D(channels, 9, padding="same", name="out",
                      kernel_initializer="zeros" if zero_init_output else "glorot_uniform")(x)
    x = layers.Activation("tanh", dtype="float32", name="tanh")(x)
    if refine:
        x = Ramp(dtype="float32", name="ramp")(layers.Add(dtype="float32", name="refinement")([x, x_in]))
    outputs = layers.Rescaling(0.5, offset=0.5, dtype="float32", name="to_unit")(x) if channels == 1 else x
    return keras.Model(inputs, outputs, name=name)


def build_srgan_discriminator(width: float = 1.0, image_size: int | None = None,
                              name: str = "discriminator") -> keras.Model:
    """SRGAN discriminator ``[N, S, S, 1]`` images in [0, 1], any ``S`` ≥ 16 (or ``image_size``) -> logits
    ``[N, 1]`` (float32)."""
    inputs = keras.Input((image_size, image_size, 1), name="image")
    x = layers.Rescaling(2.0, offset=-1.0, name="to_signed")(inputs)
    for i, filters in enumerate(DISCRIMINATOR_FILTERS):
        x = layers.Conv2D(scaled_filters(filters, width), 3, strides=2 if i % 2 else 1, padding="same", name=f"d{i}")(x)
        if i:
            x = _bn(f"d{i}_bn")(x)
        x = LeakyReLU(0.2, name=f"d{i}_lrelu")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    x = LeakyReLU(0.2, name="dense_lrelu")(layers.Dense(scaled_filters(1024, width), name="dense")(x))
    logits = layers.Dense(1, dtype="float32", name="logits")(x)
    return keras.Model(inputs, logits, name=name)
