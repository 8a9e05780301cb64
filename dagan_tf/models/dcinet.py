"""DCI-Net (Malkiel et al. 2019): a densely connected iterative network on multi-coil k-space, and the
pair-conditioned Wasserstein critic of cWGAN-AGB.

Generator (:func:`build_dcinet`), paper §3 and Appendix A.1-A.2:

* ``x_0 = Σ_c conj(S_c)·ifft2c(k_c)``, the SENSE-combined zero-filled image;
* iteration ``i = 1 … N``: the data-consistency unit works on the direct connection ``x_{i-1}`` only,
  ``d_i = x_{i-1} − w_i · Σ_c conj(S_c)·ifft2c(m·fft2c(S_c·x_{i-1}) − k_c)`` with a learned weight
  ``w_i`` (initialised to 1: with one coil and ``S = 1`` that is hard replacement of the sampled
  k-space); the convolutional unit sees ``[d_i, x_{i-1}, x_{i-2}, …, x_{i-G}]`` (the G dense
  connections, fewer in the first iterations, ``x_0`` included) as ``2·(1 + min(G, i))`` real channels:
  three 5×5 convolutions with bias, the first two ``filters`` wide with leaky ReLU 0.01 (Maas et al., the
  paper's [15]), the last to 2 channels (real/imaginary, linear; the paper's figure is not in the
  text); ``x_i = d_i + CNN(…)`` (``residual=True``, the iterative networks [3, 13] the paper builds on)
  or ``CNN(…)``.  ``G = 1`` is the paper's "no dense" variant.
* Output: ``x_N`` ``[N, S, S, 2]`` (complex image as real/imaginary channels, float32).

Inputs (a dict, :func:`network_inputs`), float32, ``S = image_size``, any number of coils ``C``:
``kspace [N, C, S, S, 2]`` (centred undersampled coil k-space, zero off the mask, :mod:`dagan_tf.kspace`
convention), ``maps [N, C, S, S, 2]`` (sensitivities, ``Σ_c |S_c|² = 1``), ``mask [N, S, S, 1]``.
Single-coil data is ``C = 1`` with ``S = 1``.

Critic (:func:`build_wgan_critic`, Appendix A.3): the pair (zero-filled magnitude, real or generated
magnitude) as two channels (``conditional=True``; one channel for the plain WGAN), four 4×4
stride-2 convolutions (64, 128, 256, 512: pix2pix's PatchGAN widths, the paper's [10]), each followed by
batch normalisation and leaky ReLU 0.2, then flatten → linear → one value per image (float32).
"""
from __future__ import annotations

import keras
import tensorflow as tf
from keras import layers

from dagan_tf import kspace as ks
from dagan_tf.models.layers import FusedBatchNorm, LeakyReLU
from dagan_tf.models.recnet import from_channels, to_channels


def network_inputs(kspace0: tf.Tensor, mask: tf.Tensor, maps: tf.Tensor | None = None) -> dict[str, tf.Tensor]:
    """DCI-Net's input dict from centred undersampled k-space ``[N, C, H, W]`` (or single-coil ``[N, H, W]``,
    then ``maps`` = 1), its ``mask [N, H, W]`` or ``[H, W]`` and the coil ``maps [N, C, H, W]``."""
    kspace0 = tf.convert_to_tensor(kspace0, tf.complex64)
    if maps is None:
        kspace0 = kspace0[:, None]
        maps = tf.ones_like(kspace0)
    shape = tf.shape(kspace0)
    mask = tf.broadcast_to(tf.cast(mask, tf.float32), tf.stack([shape[0], shape[2], shape[3]]))
    return {"kspace": to_channels(kspace0), "maps": to_channels(tf.convert_to_tensor(maps, tf.complex64)),
            "mask": mask[..., None]}


@keras.saving.register_keras_serializable(package="dagan_tf")
class SenseCombination(layers.Layer):
    """``[kspace [N, C, S, S, 2], maps [N, C, S, S, 2]] -> Σ_c conj(S_c)·ifft2c(k_c)`` as ``[N, S, S, 2]``."""

    def call(self, inputs):
        kspace0, maps = (from_channels(t) for t in inputs)
        return to_channels(ks.sense_adjoint(kspace0, maps))


@keras.saving.register_keras_serializable(package="dagan_tf")
class CoilDataConsistency(layers.Layer):
    """The DC unit: ``x − w·Σ_c conj(S_c)·ifft2c(m·fft2c(S_c·x) − k_c)``, ``w`` learned (initial ``weight``).

    Call with ``[x [N, S, S, 2], kspace [N, C, S, S, 2], maps [N, C, S, S, 2], mask [N, S, S, 1]]``;
    returns ``[N, S, S, 2]`` float32.
    """

    def __init__(self, weight: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.initial_weight = weight
        self.w = self.add_weight(name="weight", shape=(), initializer=keras.initializers.Constant(weight))

    def call(self, inputs):
        x, kspace0, maps, mask = inputs
        x, kspace0, maps = (from_channels(t) for t in (x, kspace0, maps))
        m = tf.cast(mask, tf.float32)[:, None, :, :, 0]
        residual = ks.sense_adjoint(tf.complex(m, tf.zeros_like(m)) * ks.sense_forward(x, maps) - kspace0, maps)
        w = tf.cast(self.w, tf.float32)
        return to_channels(x - tf.complex(w, tf.zeros_like(w)) * residual)

    def get_config(self):
        return {**super().get_config(), "weight": self.initial_weight}


def build_dcinet(image_size: int | None, iterations: int = 20, growth: int = 5, filters: int = 40,
                 kernel_size: int = 5, residual: bool = True, name: str = "dcinet") -> keras.Model:
    """DCI-Net (module doc): ``{kspace, maps, mask}`` -> complex image ``[N, S, S, 2]`` (float32)."""
    if iterations < 1 or growth < 1:
        raise ValueError("DCI-Net needs at least 1 iteration and a growth rate of at least 1")
    kspace0 = keras.Input((None, image_size, image_size, 2), name="kspace")
    maps = keras.Input((None, image_size, image_size, 2), name="maps")
    mask = keras.Input((image_size, image_size, 1), name="mask")
    outputs = [SenseCombination(dtype="float32", name="zero_filled")([kspace0, maps])]
    for i in range(1, iterations + 1):
        direct = CoilDataConsistency(dtype="float32", name=f"it{i}_dc")([outputs[-1], kspace0, maps, mask])
        y = layers.Concatenate(dtype="float32", name=f"it{i}_dense")([direct, *outputs[::-1][:growth]])
        for c, width in enumerate((filters, filters, 2)):
            y = layers.Conv2D(width, kernel_size, padding="same", name=f"it{i}_conv{c}")(y)
            if c < 2:
                y = LeakyReLU(0.01, name=f"it{i}_lrelu{c}")(y)
        outputs.append(layers.Add(dtype="float32", name=f"it{i}_residual")([direct, y]) if residual
                       else layers.Activation("linear", dtype="float32", name=f"it{i}_out")(y))
    # keys in sorted order: the order tf.nest (tf.function, SavedModel) gives dicts back in
    return keras.Model({"kspace": kspace0, "maps": maps, "mask": mask}, outputs[-1], name=name)


def build_wgan_critic(image_size: int, conditional: bool = True, filters: int = 64,
                      name: str = "wgan_critic") -> keras.Model:
    """The critic (module doc): ``[N, S, S, 2]`` (zero-filled, image) magnitudes, or ``[N, S, S, 1]``
    unconditioned, -> ``[N, 1]`` float32.  Needs ``S`` divisible by 16."""
    inputs = keras.Input((image_size, image_size, 2 if conditional else 1), name="pair" if conditional else "image")
    x = inputs
    for i in range(4):
        x = layers.Conv2D(filters * 2 ** i, 4, strides=2, padding="same", name=f"c{i}")(x)
        x = FusedBatchNorm(momentum=0.9, epsilon=1e-5, name=f"c{i}_bn")(x)
        x = LeakyReLU(0.2, name=f"c{i}_lrelu")(x)
    x = layers.Flatten(name="flatten")(x)
    return keras.Model(inputs, layers.Dense(1, dtype="float32", name="value")(x), name=name)
