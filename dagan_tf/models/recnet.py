"""RecNet: Schlemper's deep cascade as used by Seitzer et al. (2018), stage 1 of the two-stage refinement.

``n_c`` de-aliasing blocks, each ``n_d`` 3×3 (``kernel_size``) convolutions (``filters`` wide, leaky
ReLU 0.01, the last back to 2 channels, no activation), each followed by hard data
consistency (:class:`KSpaceDataConsistency`).  The public code's blocks are plain
(``x ← DC(CNN(x))``, ``residual=False``, the default); ``residual=True`` is Schlemper's
D5C5 form ``x ← DC(x + CNN(x))``.  Initialisers as the public code: the first
convolution of a block Xavier-uniform, the others He-normal for leaky ReLU slope 0.01
(``std = √(2 / (1 + 0.01²) / fan_in)``), biases 0.

Inputs (a dict, see :func:`network_inputs`), all float32, ``S = image_size``:

* ``zero_filled`` ``[N, S, S, 2]``: real/imaginary parts of the zero-filled image;
* ``kspace`` ``[N, S, S, 2]``: real/imaginary parts of the centred undersampled k-space
  (zero off the mask; :mod:`dagan_tf.kspace` convention);
* ``mask`` ``[N, S, S, 1]``: the centred sampling mask in {0, 1}.

Output: the complex image ``[N, S, S, 2]`` (real/imaginary), float32.  Images are on the
prepared data's scale (magnitudes in [0, 1]).
"""
from __future__ import annotations

import keras
import tensorflow as tf
from keras import layers

from dagan_tf import kspace as ks
from dagan_tf.models.layers import LeakyReLU


def to_channels(z: tf.Tensor) -> tf.Tensor:
    """Complex ``[..., H, W]`` -> real/imaginary channels ``[..., H, W, 2]`` (float32)."""
    return tf.stack([tf.math.real(z), tf.math.imag(z)], axis=-1)


def from_channels(x: tf.Tensor) -> tf.Tensor:
    """Real/imaginary channels ``[..., H, W, 2]`` -> complex64 ``[..., H, W]``."""
    x = tf.cast(x, tf.float32)
    return tf.complex(x[..., 0], x[..., 1])


def network_inputs(kspace0: tf.Tensor, mask: tf.Tensor) -> dict[str, tf.Tensor]:
    """A cascade's input dict from centred undersampled k-space ``[N, H, W]`` (complex, zero off the mask)
    and its mask ``[N, H, W]`` or ``[H, W]``."""
    kspace0 = tf.convert_to_tensor(kspace0, tf.complex64)
    mask = tf.broadcast_to(tf.cast(mask, tf.float32), tf.shape(kspace0))
    return {"zero_filled": to_channels(ks.ifft2c(kspace0)), "kspace": to_channels(kspace0), "mask": mask[..., None]}


@keras.saving.register_keras_serializable(package="dagan_tf")
class KSpaceDataConsistency(layers.Layer):
    """Hard data consistency ``x ← ifft2c((1 − m)·fft2c(x) + m·k0)`` on real/imaginary channels.

    Call with ``[image [N, H, W, 2], kspace0 [N, H, W, 2], mask [N, H, W, 1]]``; returns ``[N, H, W, 2]``
    float32 whose k-space equals ``k0`` on the mask.
    """

    def call(self, inputs):
        image, kspace0, mask = (tf.cast(t, tf.float32) for t in inputs)
        out = ks.data_consistency_image(from_channels(image), from_channels(kspace0), mask[..., 0])
        return to_channels(out)


def _he_normal_leaky(slope: float) -> keras.initializers.Initializer:
    """PyTorch's ``kaiming_normal_(a=slope)``: N(0, 2 / (1 + slope²) / fan_in), untruncated."""
    return keras.initializers.VarianceScaling(2.0 / (1.0 + slope ** 2), "fan_in", "untruncated_normal")


def build_recnet(image_size: int, blocks: int = 3, convs: int = 3, filters: int = 32, residual: bool = False,
                 kernel_size: int = 3, name: str = "recnet") -> keras.Model:
    """RecNet (module doc) with ``kernel_size``² convolutions (3: the papers'): inputs ``{zero_filled, kspace,
    mask}`` -> complex image ``[N, S, S, 2]``."""
    if blocks < 1 or convs < 2:
        raise ValueError("RecNet needs at least 1 block of at least 2 convolutions")
    shape = (image_size, image_size)
    zero_filled = keras.Input((*shape, 2), name="zero_filled")
    kspace0 = keras.Input((*shape, 2), name="kspace")
    mask = keras.Input((*shape, 1), name="mask")
    x = zero_filled
    for b in range(blocks):
        y = x
        for c in range(convs):
            last = c == convs - 1
            y = layers.Conv2D(2 if last else filters, kernel_size, padding="same", bias_initializer="zeros",
                              kernel_initializer="glorot_uniform" if c == 0 else _he_normal_leaky(0.01),
                              name=f"block{b}_conv{c}")(y)
            if not last:
                y = LeakyReLU(0.01, name=f"block{b}_lrelu{c}")(y)
        if residual:
            y = layers.Add(dtype="float32", name=f"block{b}_residual")([x, y])
        x = KSpaceDataConsistency(dtype="float32", name=f"block{b}_dc")([y, kspace0, mask])
    # keys in sorted order: the order tf.nest (tf.function, SavedModel) gives dicts back in
    return keras.Model({"kspace": kspace0, "mask": mask, "zero_filled": zero_filled}, x, name=name)
