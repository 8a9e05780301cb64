"""A network's inputs and outputs by its :class:`~dagan_tf.contract.NetworkContract`: the one path from undersampled
k-space (or the zero-filled image) to a network's input, and from its raw output to the reconstruction and its
extras.  Evaluation, comparison, prediction, export and the trainers all run networks through it."""
from __future__ import annotations

import tensorflow as tf

from dagan_tf import kspace as ks
from dagan_tf.contract import NetworkContract
from dagan_tf.errors import DaganError
from dagan_tf.models.dcinet import network_inputs as coil_network_inputs
from dagan_tf.models.recnet import network_inputs as cascade_network_inputs


def as_complex_image(image: tf.Tensor) -> tf.Tensor:
    """``[N, H, W]`` complex64 of ``[N, H, W, 1]`` magnitudes or ``[N, H, W, 2]`` real/imaginary channels."""
    image = tf.cast(image, tf.float32)
    if image.shape[-1] == 2:
        return tf.complex(image[..., 0], image[..., 1])
    return tf.complex(image[..., 0], tf.zeros_like(image[..., 0]))


def network_input(image: tf.Tensor, channels: int) -> tf.Tensor:
    """A network's input from a complex image ``[N, H, W]``: its magnitude ``[N, H, W, 1]`` (``channels=1``)
    or its real and imaginary parts ``[N, H, W, 2]`` (``channels=2``)."""
    if channels == 2:
        return tf.stack([tf.math.real(image), tf.math.imag(image)], -1)
    return tf.abs(image)[..., None]


def network_inputs(contract: NetworkContract, image: tf.Tensor, kspace0: tf.Tensor, mask: tf.Tensor,
                   maps: tf.Tensor | None = None):
    """A network's input by its ``contract``: of the complex zero-filled image ``image [N, H, W]`` (image
    networks), or of the centred undersampled ``kspace0`` (``[N, H, W]``, or coil k-space ``[N, C, H, W]`` with
    ``maps [N, C, H, W]``) and ``mask [N, H, W]`` (k-space networks)."""
    if contract.takes == "coil_kspace":
        return coil_network_inputs(kspace0, mask, maps)
    if contract.takes == "kspace":
        if maps is not None:
            raise DaganError("this network is a single-coil k-space cascade; the data hold multi-coil k-space")
        return cascade_network_inputs(kspace0, mask)
    return network_input(image, contract.channels)


def run_network(network, contract: NetworkContract, image: tf.Tensor, kspace0: tf.Tensor, mask: tf.Tensor,
                maps: tf.Tensor | None = None) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
    """``(reconstruction, extras)`` of ``network`` (inference mode) on :func:`network_inputs`: its output
    ``[N, H, W, channels]`` and the extra outputs its ``contract`` names (``[N, H, W, 1]`` each), float32."""
    return split_output(contract, network(network_inputs(contract, image, kspace0, mask, maps), training=False))


def split_output(contract: NetworkContract, output) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
    """``(reconstruction, extras)`` of a network's raw ``output`` by its ``contract`` (float32)."""
    if not contract.extras:
        return tf.cast(output, tf.float32), {}
    return tf.cast(output["reconstruction"], tf.float32), {k: tf.cast(output[k], tf.float32) for k in contract.extras}


def apply_dc(image: tf.Tensor, kspace0: tf.Tensor, mask: tf.Tensor, maps: tf.Tensor | None = None) -> tf.Tensor:
    """Hard data consistency of ``[N, H, W, 1]`` magnitudes (or ``[N, H, W, 2]`` complex channels) with the
    measurements; the magnitude ``[N, H, W, 1]`` after.

    Single-coil: centred ``kspace0 [N, H, W]``.  Multi-coil: ``kspace0 [N, C, H, W]`` and ``maps
    [N, C, H, W]``: the coil k-space ``fft2c(S_c·x)`` takes the samples, then ``Σ conj(S_c)·ifft2c``.
    """
    x = as_complex_image(image)
    if maps is None:
        return tf.abs(ks.data_consistency_image(x, kspace0, mask))[..., None]
    k = ks.data_consistency(ks.sense_forward(x, maps), kspace0, mask[..., None, :, :])
    return tf.abs(ks.sense_adjoint(k, maps))[..., None]


def magnitude_or_dc(reconstruction: tf.Tensor, kspace0: tf.Tensor, mask: tf.Tensor, maps: tf.Tensor | None,
                    dc: bool) -> tf.Tensor:
    """The magnitude ``[N, H, W, 1]`` of a reconstruction ``[N, H, W, 1 or 2]``, after hard data consistency
    (:func:`apply_dc`) with ``dc``."""
    return apply_dc(reconstruction, kspace0, mask, maps) if dc else tf.abs(as_complex_image(reconstruction))[..., None]
