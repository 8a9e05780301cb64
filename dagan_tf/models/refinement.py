"""Stage 2 of Seitzer et al. (2018): a gated refinement U-Net on a frozen RecNet, and its PatchGAN critic.

Refined network (:class:`RefinedNetwork`), ``y = R(inputs)`` the frozen RecNet's complex
output ``[N, S, S, 2]``:

* ``r`` = the refined part of ``y`` ``[N, S, S, 1]``: its real channel (``part="real"``, the
  public code; images are real-valued in the magnitude regime) or its magnitude
  (``part="magnitude"``, for phase-bearing data);
* ``r`` is scaled per example to (−1, 1) with its min and max: ``r_s = 2(r − lo)/(hi − lo) − 1``;
* ``Δ = V(v)`` with ``v`` the per-example, per-channel scaled ``y`` (``scaled_input=True``,
  the paper: "we scale R(x_u) to (−1, 1) before using it as V's input") or the raw ``y``
  (``False``, the public code);
* ``refined = unscale(r_s + λ·Δ)`` with λ a trainable scalar initialised to 0, so at λ = 0
  the output is RecNet's exactly;
* output ``reconstruction``: ``[refined, imag(y)]`` (``real``) or ``refined`` ``[N, S, S, 1]``
  (``magnitude``), and ``refinement`` = ``refined − r`` ``[N, S, S, 1]``, the change λ·V in
  image units.

Refinement U-Net V (the public ``models/unet.py``): encoder 32/64/128 (two 4×4
convolutions per scale, reflection 'same' padding (1, 2), no bias, batch norm, leaky ReLU
0.1, max-pool 2), decoder 64/32 (nearest ×2 upsampling → conv → BN → lReLU, concatenation
``[skip, up]``, two convolutions), 1×1 head to 1 channel; orthogonal initialisation with
gain √2, BN γ = 1.

PatchGAN discriminator (:func:`build_patch_discriminator`, the public ``discriminators.py``):
4×4 convolutions 64, 128, 256, 512, 1024, 1024 (``layers`` of them, filters ``64·2^i``
capped at 1024), strides 2 except the last (1), reflection 'same' padding, batch norm
except the first layer (which alone has a bias), leaky ReLU 0.2, channel dropout 0.5
after the last three, then an unpadded 4×4 convolution to one logit per patch (13×13 at
512², 5×5 at 256²); N(0, 0.02) weights, BN γ ~ N(1, 0.02).  Input: the magnitude
``[N, S, S, 1]``; outputs: the list of the leaky-ReLU features (after dropout) and the
logits, as feature matching uses them.
"""
from __future__ import annotations

import keras
import tensorflow as tf
from keras import layers

from dagan_tf.models.layers import FusedBatchNorm, LeakyReLU, inference_network
from dagan_tf.models.recnet import network_inputs

REFINED_PARTS = ("real", "magnitude")
ENCODER = (32, 64, 128)
DECODER = (64, 32)


@keras.saving.register_keras_serializable(package="dagan_tf")
class ReflectionPad(layers.Layer):
    """Reflection padding of ``[N, H, W, C]`` by ``(before, after)`` on both spatial axes."""

    def __init__(self, before: int, after: int, **kwargs):
        super().__init__(**kwargs)
        self.before, self.after = before, after

    def call(self, x):
        pads = [[0, 0], [self.before, self.after], [self.before, self.after], [0, 0]]
        return tf.pad(x, pads, mode="REFLECT")

    def get_config(self):
        return {**super().get_config(), "before": self.before, "after": self.after}


def _same_pads(kernel: int) -> tuple[int, int]:
    """PyTorch-code 'same' padding of an even or odd kernel: (1, 2) for 4, (1, 1) for 3."""
    total = kernel - 1
    return total // 2, total - total // 2


def _conv(x, filters, kernel, name, strides=1, bias=False, init=None):
    x = ReflectionPad(*_same_pads(kernel), name=f"{name}_pad")(x)
    return layers.Conv2D(filters, kernel, strides=strides, use_bias=bias, name=name,
                         kernel_initializer=init or keras.initializers.Orthogonal(2 ** 0.5))(x)


def _conv_bn_lrelu(x, filters, name):
    x = _conv(x, filters, 4, name)
    x = FusedBatchNorm(momentum=0.9, epsilon=1e-5, name=f"{name}_bn")(x)
    return LeakyReLU(0.1, name=f"{name}_lrelu")(x)


def build_refinement_unet(image_size: int, in_channels: int = 2, width: float = 1.0, out_channels: int = 1,
                          name: str = "refinement_unet") -> keras.Model:
    """V: ``[N, S, S, in_channels] -> Δ [N, S, S, out_channels]`` (module doc); ``width`` multiplies the
    filters.  Also the SIS segmenter's U-Net (``out_channels`` = classes, logits)."""
    if image_size % 4:
        raise ValueError(f"the refinement U-Net needs an image size divisible by 4, got {image_size}")
    f = [max(1, round(n * width)) for n in ENCODER + DECODER]
    inputs = keras.Input((image_size, image_size, in_channels), name="recnet_output")
    x, skips = inputs, []
    for level in range(len(ENCODER)):
        if level:
            x = layers.MaxPooling2D(2, name=f"enc{level}_pool")(x)
        x = _conv_bn_lrelu(_conv_bn_lrelu(x, f[level], f"enc{level}_conv0"), f[level], f"enc{level}_conv1")
        skips.append(x)
    for i, level in enumerate(range(len(ENCODER) - 2, -1, -1)):
        up = layers.UpSampling2D(2, interpolation="nearest", name=f"dec{level}_up")(x)
        up = _conv_bn_lrelu(up, f[len(ENCODER) + i], f"dec{level}_upconv")
        x = layers.Concatenate(name=f"dec{level}_concat")([skips[level], up])
        x = _conv_bn_lrelu(_conv_bn_lrelu(x, f[len(ENCODER) + i], f"dec{level}_conv0"), f[len(ENCODER) + i],
                           f"dec{level}_conv1")
    delta = layers.Conv2D(out_channels, 1, kernel_initializer=keras.initializers.Orthogonal(2 ** 0.5), bias_initializer="zeros",
                          dtype="float32", name="head")(x)
    return keras.Model(inputs, delta, name=name)


def _scale_params(x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Per-example, per-channel ``(lo, span)`` of ``[N, H, W, C]`` (span ≥ 1e-8)."""
    lo = tf.reduce_min(x, axis=[1, 2], keepdims=True)
    span = tf.maximum(tf.reduce_max(x, axis=[1, 2], keepdims=True) - lo, 1e-8)
    return lo, span


def to_signed(x: tf.Tensor) -> tf.Tensor:
    """Per-example, per-channel min-max scaling of ``[N, H, W, C]`` to [−1, 1]."""
    lo, span = _scale_params(x)
    return 2.0 * (x - lo) / span - 1.0


@keras.saving.register_keras_serializable(package="dagan_tf")
class RefinementGate(layers.Layer):
    """``(y [N, S, S, 2], Δ [N, S, S, 1]) -> (reconstruction, refinement)`` with the trainable gate λ
    (initialised to 0); see the module doc.  Float32."""

    def __init__(self, part: str = "real", **kwargs):
        super().__init__(**kwargs)
        if part not in REFINED_PARTS:
            raise ValueError(f"part must be one of {REFINED_PARTS}, got {part!r}")
        self.part = part
        self.gate = self.add_weight(name="lambda", shape=(), initializer="zeros", trainable=True)

    def call(self, inputs):
        y, delta = (tf.cast(t, tf.float32) for t in inputs)
        if self.part == "real":
            r = y[..., :1]
        else:
            r = tf.sqrt(tf.reduce_sum(tf.square(y), axis=-1, keepdims=True) + 1e-12)
        lo, span = _scale_params(r)
        change = self.gate * delta * span / 2.0  # unscale(r_s + λΔ) − r
        refined = r + change
        out = tf.concat([refined, y[..., 1:]], axis=-1) if self.part == "real" else refined
        return out, change

    def get_config(self):
        return {**super().get_config(), "part": self.part}


class RefinedNetwork(keras.Model):
    """The refined network: RecNet's input dict -> ``{"reconstruction", "refinement"}`` (module doc).

    ``recnet`` is frozen (``trainable = False``, always run in inference mode); its weights are part of
    this model, so a refinement run's weights reconstruct on their own.  ``input`` is RecNet's.
    """

    def __init__(self, recnet: keras.Model, unet: keras.Model, part: str = "real", scaled_input: bool = True,
                 **kwargs):
        super().__init__(name=kwargs.pop("name", "refined"), **kwargs)
        recnet.trainable = False
        self.recnet, self.unet, self.scaled_input = recnet, unet, scaled_input
        self.gate = RefinementGate(part, dtype="float32", name="gate")
        self(network_inputs(tf.zeros([1, *recnet.input["zero_filled"].shape[1:3]], tf.complex64),
                            tf.zeros(recnet.input["zero_filled"].shape[1:3])))

    @property
    def input(self):
        return self.recnet.input

    def forward(self, inputs, training=False) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """``(reconstruction, refinement, Δ)``: Δ ``[N, S, S, 1]`` is V's ungated output (for its ℓ1 penalty)."""
        y = tf.cast(self.recnet(inputs, training=False), tf.float32)
        delta = self.unet(to_signed(y) if self.scaled_input else y, training=training)
        reconstruction, refinement = self.gate([y, delta])
        return reconstruction, refinement, delta

    def call(self, inputs, training=False):
        reconstruction, refinement, _ = self.forward(inputs, training)
        return {"reconstruction": reconstruction, "refinement": refinement}

    def inference_copy(self) -> "RefinedNetwork":
        """The same network of the inference copies (:func:`~dagan_tf.models.layers.inference_network`) of its
        RecNet and refinement U-Net, and its gate."""
        copy = RefinedNetwork(inference_network(self.recnet), inference_network(self.unet), self.gate.part,
                              self.scaled_input)
        copy.gate.set_weights(self.gate.get_weights())
        return copy


def build_patch_discriminator(n_layers: int = 6, width: float = 1.0, dropout: float = 0.5,
                              image_size: int | None = None, name: str = "patch_discriminator") -> keras.Model:
    """PatchGAN ``[N, S, S, 1]`` magnitudes -> ``[features…, logits [N, P, P, 1]]`` (module doc); any ``S``
    unless ``image_size`` fixes it.  Needs ``S / 2^(n_layers − 1) ≥ 4`` (128² for the paper's six layers).
    """
    init = keras.initializers.RandomNormal(0.0, 0.02)
    inputs = keras.Input((image_size, image_size, 1), name="image")
    x, features = inputs, []
    for i in range(n_layers):
        filters = max(1, round(min(64 * 2 ** i, 1024) * width))
        x = _conv(x, filters, 4, f"d{i}", strides=2 if i < n_layers - 1 else 1, bias=i == 0, init=init)
        if i:
            x = FusedBatchNorm(momentum=0.9, epsilon=1e-5, name=f"d{i}_bn",
                               gamma_initializer=keras.initializers.RandomNormal(1.0, 0.02))(x)
        x = LeakyReLU(0.2, name=f"d{i}_lrelu")(x)
        if i >= n_layers - 3 and dropout:
            x = layers.SpatialDropout2D(dropout, name=f"d{i}_dropout")(x)
        features.append(x)
    logits = layers.Conv2D(1, 4, padding="valid", kernel_initializer=init, dtype="float32", name="logits")(x)
    return keras.Model(inputs, [*features, logits], name=name)


def min_discriminator_size(n_layers: int) -> int:
    """Smallest image side the PatchGAN of ``n_layers`` accepts (one 4×4 patch at the end)."""
    return 4 * 2 ** (n_layers - 1)
