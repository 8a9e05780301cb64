"""The original DAGAN networks as plain Keras models.

Generator (``u_net_bn``): stride-2 4×4 convolutions (64, 128, 256, 512, 512, 512,
512, 512) with bias, batch norm (momentum 0.9, epsilon 1e-5, γ ~ N(1, 0.02)),
leaky ReLU 0.2; a mirrored transposed-convolution decoder concatenating
``[decoder, encoder]``; 1×1 conv + tanh.  The depth follows the input size
(at most 8 levels, each halving the side), so 128² or 320² inputs work.
Refinement (PPGR): ``clip(tanh(…) + x_zf, -1, 1)``.

The generator's public interface is in [0, 1]: input ``[N, H, W, 1]`` zero-filled
magnitude, output ``[N, H, W, 1]`` reconstruction; internally it works in
[-1, 1] like the original (``2x - 1`` in, ``(y + 1)/2`` out).

Discriminator: h0–h5 4×4 stride-2 convs (64…2048), h6/h7 1×1, a residual branch,
flatten, dense(1) → logits ``[N, 1]``.  Call it with ``training=True`` always
(the original's D is always in batch-norm training mode) and on real and fake
batches separately.
"""
from __future__ import annotations

import keras
from keras import layers, ops

from dagan_tf.models.layers import FusedBatchNorm, GemmConv2D, GemmConv2DTranspose, LeakyReLU
from dagan_tf.models.recnet import KSpaceDataConsistency

ENCODER_FILTERS = (64, 128, 256, 512, 512, 512, 512, 512)
DECODER_FILTERS = (64, 64, 128, 256, 1024, 1024, 1024, 512)  # output level 0 (full size) … 7
DISCRIMINATOR_FILTERS = (64, 128, 256, 512, 1024, 2048)


@keras.saving.register_keras_serializable(package="dagan_tf")
class Ramp(layers.Layer):
    """The paper's ramp: ``clip(x, -1, 1)`` (zero gradient outside, as ``tf.clip_by_value``)."""

    def call(self, x):
        return ops.clip(x, -1.0, 1.0)


def _bn(name: str) -> FusedBatchNorm:
    return FusedBatchNorm(momentum=0.9, epsilon=1e-5, name=name,
                          gamma_initializer=keras.initializers.RandomNormal(1.0, 0.02))


def scaled_filters(filters: int, width: float) -> int:
    """``filters`` times the width multiplier, at least 1."""
    return max(1, int(round(filters * width)))


def unet_depth(size: int, max_depth: int = 8) -> int:
    """Number of stride-2 levels for a side ``size``: halvings that stay integral, at most ``max_depth``."""
    depth = 0
    while depth < max_depth and size % 2 == 0 and size > 1:
        size //= 2
        depth += 1
    return depth


def build_generator(image_size: int = 256, width: float = 1.0, refine: bool = True,
                    max_depth: int = 8, name: str = "generator", channels: int = 1,
                    zero_init_output: bool = False, data_consistency: bool = False) -> keras.Model:
    """DAGAN U-Net generator ``[N, S, S, channels] -> [N, S, S, channels]``.

    ``channels=1`` (the paper): magnitude in [0, 1] in and out.  ``channels=2`` (complex
    DAGAN): real and imaginary parts of the complex image in and out, used as they are
    (already signed, |·| ≤ ~1); the refinement ``clip(tanh(…) + x, -1, 1)`` acts on each part.
    ``zero_init_output`` starts the last 1×1 convolution at zero (ours; the paper's is N(0, 0.02²)), so with
    ``refine`` the untrained generator returns its input: the random residual of the paper's start is noise
    of about the size of the complex parts of a dark image, which put the untrained complex DAGAN below
    zero-filled.  ``data_consistency`` (ours, complex only) ends the network in hard data consistency
    (:class:`~dagan_tf.models.recnet.KSpaceDataConsistency`): it then takes a cascade's inputs
    ``{zero_filled, kspace [N, S, S, 2], mask [N, S, S, 1]}`` (:func:`dagan_tf.models.recnet.network_inputs`), and
    its output's k-space equals the measurements on the mask.
    """
    depth = unet_depth(image_size, max_depth)
    if depth < 2:
        raise ValueError(f"image size {image_size} must be divisible by 4")
    w_init = keras.initializers.TruncatedNormal(stddev=0.01)
    conv_kw = dict(kernel_size=4, strides=2, padding="same", kernel_initializer=w_init, bias_initializer="zeros")
    if channels not in (1, 2):
        raise ValueError(f"channels must be 1 (magnitude) or 2 (complex), got {channels}")
    if data_consistency and channels != 2:
        raise ValueError("data consistency needs the complex generator (channels=2)")
    inputs = keras.Input((image_size, image_size, channels), name="zero_filled")
    x_in = layers.Rescaling(2.0, offset=-1.0, name="to_signed")(inputs) if channels == 1 else inputs
    skips, x = [], x_in
    for level in range(1, depth + 1):
        x = GemmConv2D(scaled_filters(ENCODER_FILTERS[level - 1], width), name=f"conv{level}", **conv_kw)(x)
        if 1 < level < depth:
            x = _bn(f"conv{level}_bn")(x)
        x = LeakyReLU(0.2, name=f"conv{level}_lrelu")(x)
        skips.append(x)
    for level in range(depth - 1, -1, -1):
        if level < depth - 1:
            x = layers.Concatenate(name=f"concat{level + 1}")([x, skips[level]])
        x = GemmConv2DTranspose(scaled_filters(DECODER_FILTERS[level], width), name=f"deconv{level}", **conv_kw)(x)
        x = _bn(f"deconv{level}_bn")(x)
        x = layers.ReLU(name=f"deconv{level}_relu")(x)
    out_init = "zeros" if zero_init_output else keras.initializers.TruncatedNormal(stddev=0.02)
    x = layers.Conv2D(channels, 1, kernel_initializer=out_init, name="out")(x)
    x = layers.Activation("tanh", dtype="float32", name="tanh")(x)
    if refine:
        x = layers.Add(dtype="float32", name="refinement")([x, x_in])
        x = Ramp(dtype="float32", name="ramp")(x)
    outputs = layers.Rescaling(0.5, offset=0.5, dtype="float32", name="to_unit")(x) if channels == 1 else x
    if data_consistency:
        kspace0 = keras.Input((image_size, image_size, 2), name="kspace")
        mask = keras.Input((image_size, image_size, 1), name="mask")
        outputs = KSpaceDataConsistency(dtype="float32", name="data_consistency")([outputs, kspace0, mask])
        inputs = {"zero_filled": inputs, "kspace": kspace0, "mask": mask}
    return keras.Model(inputs, outputs, name=name)


def build_discriminator(image_size: int = 256, width: float = 1.0, name: str = "discriminator") -> keras.Model:
    """DAGAN discriminator: ``[N, S, S, 1]`` image in [0, 1] -> logits ``[N, 1]`` (float32)."""
    w_init = keras.initializers.RandomNormal(stddev=0.02)
    n_strided = min(len(DISCRIMINATOR_FILTERS), unet_depth(image_size))

    def conv(t, filters, kernel, strides, label, bias=False):
        return GemmConv2D(scaled_filters(filters, width), kernel, strides=strides, padding="same", use_bias=bias,
                          kernel_initializer=w_init, name=label)(t)

    inputs = keras.Input((image_size, image_size, 1), name="image")
    x = layers.Rescaling(2.0, offset=-1.0, name="to_signed")(inputs)
    x = LeakyReLU(0.2, name="h0_lrelu")(conv(x, DISCRIMINATOR_FILTERS[0], 4, 2, "h0", bias=True))
    for i in range(1, n_strided):
        x = conv(x, DISCRIMINATOR_FILTERS[i], 4, 2, f"h{i}")
        x = LeakyReLU(0.2, name=f"h{i}_lrelu")(_bn(f"h{i}_bn")(x))
    x = LeakyReLU(0.2, name="h6_lrelu")(_bn("h6_bn")(conv(x, 1024, 1, 1, "h6")))
    h7 = _bn("h7_bn")(conv(x, 512, 1, 1, "h7"))
    r = LeakyReLU(0.2, name="res1_lrelu")(_bn("res1_bn")(conv(h7, 128, 1, 1, "res1")))
    r = LeakyReLU(0.2, name="res2_lrelu")(_bn("res2_bn")(conv(r, 128, 3, 1, "res2")))
    r = _bn("res3_bn")(conv(r, 512, 3, 1, "res3"))
    x = LeakyReLU(0.2, name="h8_lrelu")(layers.Add(name="h8")([h7, r]))
    x = layers.Flatten(name="flatten")(x)
    logits = layers.Dense(1, kernel_initializer=w_init, dtype="float32", name="logits")(x)
    return keras.Model(inputs, logits, name=name)
