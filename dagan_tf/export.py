"""Export a trained generator as a TF Serving SavedModel.

Signatures (``H = W`` = the model's image size):

* ``serving_default``: ``zero_filled`` float32 ``[N, H, W, 1]`` (magnitude in [0, 1]; for a
  complex generator ``[N, H, W, 2]``, the real and imaginary parts of the complex zero-filled
  image) -> ``reconstruction`` float32 ``[N, H, W, 1]`` (magnitude).
* ``from_kspace``: ``kspace_real``, ``kspace_imag`` float32 ``[N, H, W]`` (centred
  undersampled k-space, zero off the mask, of an image scaled to [0, 1]) and ``mask``
  float32 ``[N, H, W]`` -> ``reconstruction`` ``[N, H, W, 1]`` after hard data
  consistency, and ``zero_filled`` ``[N, H, W, 1]``.  Real and imaginary parts are
  separate inputs because TF Serving's REST API has no complex type.

The module is a plain ``tf.Module`` saved with ``tf.saved_model.save``, so each
variable is stored once (Keras' ``model.export`` stores them twice).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import keras
import tensorflow as tf

from dagan_tf import kspace as ks
from dagan_tf.errors import DaganError
from dagan_tf.inference import apply_dc, as_complex_image, network_input
from dagan_tf.outputs import atomic_output_dir


class ReconstructionModule(tf.Module):
    """Serving wrapper of a generator ``[N, S, S, C] -> [N, S, S, C]`` (C = 1 magnitude, 2 complex)."""

    def __init__(self, generator: keras.Model):
        super().__init__(name="dagan_reconstruction")
        self.generator = generator
        size, self.channels = generator.input_shape[1], generator.input_shape[-1]
        image = tf.TensorSpec([None, size, size, self.channels], tf.float32, name="zero_filled")
        plane = [None, size, size]
        self.serving_default = tf.function(self._serve, input_signature=[image])
        self.from_kspace = tf.function(self._serve_kspace, input_signature=[
            tf.TensorSpec(plane, tf.float32, name="kspace_real"),
            tf.TensorSpec(plane, tf.float32, name="kspace_imag"),
            tf.TensorSpec(plane, tf.float32, name="mask")])

    def _reconstruct(self, zero_filled):
        return tf.cast(self.generator(zero_filled, training=False), tf.float32)

    def _serve(self, zero_filled):
        return {"reconstruction": tf.abs(as_complex_image(self._reconstruct(zero_filled)))[..., None]}

    def _serve_kspace(self, kspace_real, kspace_imag, mask):
        k0 = tf.complex(kspace_real, kspace_imag) * tf.cast(tf.complex(mask, tf.zeros_like(mask)), tf.complex64)
        image = ks.ifft2c(k0)
        return {"reconstruction": apply_dc(self._reconstruct(network_input(image, self.channels)), k0, mask),
                "zero_filled": tf.abs(image)[..., None]}


def export_generator(generator: keras.Model, out: str | Path, overwrite: bool = False) -> Path:
    """Write the SavedModel (atomically) and return its folder."""
    module = ReconstructionModule(generator)
    with atomic_output_dir(out, overwrite) as tmp:
        tf.saved_model.save(module, str(tmp), signatures={"serving_default": module.serving_default,
                                                          "from_kspace": module.from_kspace})
    return Path(out)


def check_export_signatures(signatures, path) -> None:
    """Raise unless ``signatures`` are this package's (``serving_default`` and ``from_kspace``, named tensors)."""
    expected = {"serving_default": {"zero_filled"}, "from_kspace": {"kspace_real", "kspace_imag", "mask"}}
    for name, inputs in expected.items():
        if name not in signatures or set(signatures[name].structured_input_signature[1]) != inputs:
            raise DaganError(f"{path} is not a dagan-tf export (no signature {name} with inputs "
                             f"{', '.join(sorted(inputs))}); load only exports you trust")


def load_export(path: str | Path) -> tuple[Callable[[tf.Tensor], tf.Tensor], int, int, Callable]:
    """``(reconstruct, image_size, channels, from_kspace)`` of an exported SavedModel: ``serving_default``
    as a function of the zero-filled input, and the ``from_kspace`` signature.

    The signatures are checked before anything runs.  A SavedModel executes its
    own graph: load only exports you trust.
    """
    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as exc:  # corrupt protobufs, missing variables, ... raise many types
        raise DaganError(f"cannot load the SavedModel {path}: {str(exc).splitlines()[0][:200]} (corrupt?)") from None
    check_export_signatures(loaded.signatures, path)
    signature = loaded.signatures["serving_default"]
    shape = signature.structured_input_signature[1]["zero_filled"].shape
    return ((lambda x: signature(zero_filled=x)["reconstruction"]), int(shape[1]), int(shape[-1]),
            loaded.signatures["from_kspace"])
