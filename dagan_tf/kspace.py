"""The one k-space convention of dagan-tf.

Convention (defined here, used everywhere):

* ``fft2c`` / ``ifft2c`` are the *centred, orthonormal* 2-D DFT over the last two
  axes: ``fft2c(x) = fftshift(fft2(ifftshift(x)) / sqrt(H*W))``.  DC sits at
  ``[H//2, W//2]``; Parseval holds (``||fft2c(x)|| == ||x||``).
* Masks are **centred**: they multiply ``fft2c`` output directly (DC at the
  centre), as the original DAGAN masks do (they multiply fftshifted k-space).
  A mask in the unshifted layout (fastMRI/Schlemper style, DC at ``[0, 0]``) is
  converted with ``numpy.fft.fftshift`` once, before use.
* Images are magnitude images; a zero-filled reconstruction is
  ``|ifft2c(mask * fft2c(image))|``.  For even H, W this equals the original
  DAGAN's ``abs(ifft2(ifftshift(fftshift(fft2(x)) * mask)))`` exactly (the
  orthonormal scaling cancels in the round trip).

Shapes: tensors are ``[..., H, W]`` (real or complex); Keras images ``[N, H, W, 1]``
are passed as ``image[..., 0]``.
"""
from __future__ import annotations

import keras
import tensorflow as tf

_AXES = (-2, -1)


def _as_complex(x: tf.Tensor) -> tf.Tensor:
    x = tf.convert_to_tensor(x)
    if x.dtype.is_complex:
        return x
    return tf.complex(tf.cast(x, tf.float32), tf.zeros_like(tf.cast(x, tf.float32)))


def _ortho_scale(x: tf.Tensor) -> tf.Tensor:
    n = tf.cast(tf.shape(x)[-2] * tf.shape(x)[-1], tf.float32)
    return tf.cast(tf.sqrt(n), x.dtype)


def fft2c(image: tf.Tensor) -> tf.Tensor:
    """Centred orthonormal 2-D FFT over the last two axes.

    Args:
        image: ``[..., H, W]`` real or complex tensor.
    Returns:
        ``[..., H, W]`` complex64 k-space, DC at ``[H//2, W//2]``.
    """
    x = _as_complex(image)
    x = tf.signal.ifftshift(x, axes=_AXES)
    k = tf.signal.fft2d(x) / _ortho_scale(x)
    return tf.signal.fftshift(k, axes=_AXES)


def ifft2c(kspace: tf.Tensor) -> tf.Tensor:
    """Inverse of :func:`fft2c`: ``[..., H, W]`` centred k-space -> complex image."""
    k = _as_complex(kspace)
    k = tf.signal.ifftshift(k, axes=_AXES)
    x = tf.signal.ifft2d(k) * _ortho_scale(k)
    return tf.signal.fftshift(x, axes=_AXES)


def undersample(image: tf.Tensor, mask: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Simulate a Cartesian acquisition of ``image`` with a centred ``mask``.

    Args:
        image: ``[..., H, W]`` real or complex image.
        mask: ``[H, W]`` or broadcastable ``[..., H, W]`` with values in {0, 1}.
    Returns:
        ``(kspace, zero_filled)``: undersampled centred k-space ``[..., H, W]``
        (zero off the mask) and the complex zero-filled image ``[..., H, W]``.
    """
    k = fft2c(image) * _as_complex(mask)
    return k, ifft2c(k)


def data_consistency(kspace: tf.Tensor, kspace0: tf.Tensor, mask: tf.Tensor,
                     noise_weight: tf.Tensor | float | None = None) -> tf.Tensor:
    """Replace (or blend) sampled k-space locations with the measurements.

    Noiseless (``noise_weight=None``): ``(1 - m)·k + m·k0``.
    Noisy (``noise_weight=v``):        ``(1 - m)·k + m·(k + v·k0) / (1 + v)``;
    ``v -> inf`` recovers the noiseless form, ``v = 0`` ignores the data.

    Args:
        kspace: ``[..., H, W]`` centred k-space of the current estimate.
        kspace0: ``[..., H, W]`` measured centred k-space.
        mask: ``[H, W]`` or ``[..., H, W]`` in {0, 1}.
        noise_weight: ``None``, a float, or a (trainable) scalar tensor ``v >= 0``.
    Returns:
        ``[..., H, W]`` complex64 k-space.
    """
    k = _as_complex(kspace)
    k0 = _as_complex(kspace0)
    m = _as_complex(mask)
    if noise_weight is None:
        return (1 - m) * k + m * k0
    v = tf.cast(tf.convert_to_tensor(noise_weight), tf.float32)
    v = tf.complex(v, tf.zeros_like(v))
    return (1 - m) * k + m * (k + v * k0) / (1 + v)


def data_consistency_image(image: tf.Tensor, kspace0: tf.Tensor, mask: tf.Tensor,
                           noise_weight: tf.Tensor | float | None = None) -> tf.Tensor:
    """Image-domain wrapper of :func:`data_consistency`: ``[..., H, W]`` image -> complex image."""
    return ifft2c(data_consistency(fft2c(image), kspace0, mask, noise_weight))


@keras.saving.register_keras_serializable(package="dagan_tf")
class DataConsistency(keras.layers.Layer):
    """Keras layer applying data consistency to a real image estimate.

    Call with ``[image, kspace0, mask]``: image ``[N, H, W, 1]`` float, kspace0
    ``[N, H, W]`` complex64, mask ``[H, W]`` or ``[N, H, W]``; returns the
    magnitude ``[N, H, W, 1]``.  ``noise_weight=None`` gives hard replacement;
    a float gives the noisy form, trainable when ``trainable_weight=True``.
    """

    def __init__(self, noise_weight: float | None = None, trainable_weight: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.noise_weight = noise_weight
        self.trainable_weight = trainable_weight
        if trainable_weight and noise_weight is None:
            raise ValueError("trainable_weight=True needs an initial noise_weight")
        self.v = None
        if noise_weight is not None:
            self.v = self.add_weight(name="noise_weight", shape=(), trainable=trainable_weight,
                                     initializer=keras.initializers.Constant(noise_weight))

    def call(self, inputs):
        image, kspace0, mask = inputs
        x = tf.cast(image[..., 0], tf.float32)
        v = None if self.v is None else tf.maximum(self.v, 0.0)
        return tf.abs(data_consistency_image(x, kspace0, mask, v))[..., None]

    def get_config(self):
        return {**super().get_config(), "noise_weight": self.noise_weight,
                "trainable_weight": self.trainable_weight}


def sense_forward(image: tf.Tensor, sensitivities: tf.Tensor) -> tf.Tensor:
    """Multi-coil forward model ``k_c = fft2c(s_c · x)``.

    Args:
        image: ``[..., H, W]`` complex image.
        sensitivities: ``[..., C, H, W]`` complex coil sensitivity maps.
    Returns:
        ``[..., C, H, W]`` centred multi-coil k-space.
    """
    return fft2c(_as_complex(sensitivities) * _as_complex(image)[..., None, :, :])


def sense_adjoint(kspace: tf.Tensor, sensitivities: tf.Tensor) -> tf.Tensor:
    """Adjoint of :func:`sense_forward`: ``x = sum_c conj(s_c) · ifft2c(k_c)``.

    Args:
        kspace: ``[..., C, H, W]`` centred multi-coil k-space.
        sensitivities: ``[..., C, H, W]`` coil sensitivity maps.
    Returns:
        ``[..., H, W]`` complex image.
    """
    return tf.reduce_sum(tf.math.conj(_as_complex(sensitivities)) * ifft2c(kspace), axis=-3)
