"""Load a trained generator (from a run folder or an export) and reconstruct batches.

A reconstruction maps a zero-filled magnitude ``[N, H, W, 1]`` in [0, 1] to
``[N, H, W, 1]``; with data consistency (``dc=True``) the network output's
k-space is replaced by the measurements on the mask (hard DC) and the magnitude
is returned — the paper's "future work", off by default as in the paper.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable

import tensorflow as tf

from dagan_tf import kspace as ks
from dagan_tf import recipes
from dagan_tf.errors import DaganError
from dagan_tf.hardware import keras_policy, precision_policy
from dagan_tf.models.layers import inference_network
from dagan_tf.models.dcinet import network_inputs as coil_network_inputs
from dagan_tf.models.dcinet import takes_coil_kspace
from dagan_tf.models.recnet import network_inputs, takes_kspace
from dagan_tf.models.refinement import RefinedNetwork


def load_run_generator(run_dir: str | Path, inference: bool = False, precision: str = "float32"):
    """``(generator, config)`` of a run, with its best weights (else the newest intact checkpoint).

    With ``inference`` the generator is its inference copy (:func:`inference_copy`: the same outputs within 1e-5
    of their scale, faster on this machine, not for training into the run's checkpoints); ``eval``, ``compare``,
    ``predict`` and ``export`` use it.  ``precision`` (``float32`` or ``bfloat16``,
    :func:`dagan_tf.hardware.inference_precision`) is the compute precision of its layers, whatever the training
    precision; variables, inputs, outputs and data consistency stay float32.
    Raises :class:`DaganError` for weights that are truncated or do not fit the run's config.
    """
    from dagan_tf.training.run import build_generator

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise DaganError(f"{run_dir} is not a training run (no config.yaml)")
    config = recipes.load_config_file(run_dir / "config.yaml")
    with precision_policy(keras_policy(precision)):
        generator = build_generator(config)
        _load_trained_weights(generator, run_dir)
        return (inference_copy(generator) if inference else generator), config


def _load_trained_weights(generator, run_dir: Path) -> None:
    """Load ``run_dir``'s best weights into ``generator``, else its newest intact checkpoint."""
    from dagan_tf.training.callbacks import checkpoints_newest_first

    best = run_dir / "best.weights.h5"
    if best.is_file():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # Keras warns (and loads partly) on some mismatches
                generator.load_weights(str(best))
        except Exception as exc:  # h5py OSError (truncated), ValueError (shapes), KeyError (layers)
            raise DaganError(f"cannot load {best}: {str(exc).splitlines()[0][:200]} "
                             "(truncated, or not trained with this config.yaml?)") from None
        return
    for path in checkpoints_newest_first(run_dir / "checkpoints"):
        try:
            tf.train.Checkpoint(generator=generator).restore(path).expect_partial()
            return
        except Exception:  # a damaged checkpoint: try the next older one
            continue
    raise DaganError(f"{run_dir} has no trained weights yet (no best.weights.h5, no intact checkpoint)")


def inference_copy(generator):
    """``generator``'s inference copy (:func:`dagan_tf.models.layers.inference_network`; of a refined network,
    its RecNet's and its refinement U-Net's)."""
    if not isinstance(generator, RefinedNetwork):
        return inference_network(generator)
    copy = RefinedNetwork(inference_network(generator.recnet), inference_network(generator.unet), generator.gate.part,
                          generator.scaled_input)
    copy.gate.set_weights(generator.gate.get_weights())
    return copy


def as_complex_image(image: tf.Tensor) -> tf.Tensor:
    """``[N, H, W]`` complex64 of ``[N, H, W, 1]`` magnitudes or ``[N, H, W, 2]`` real/imaginary channels."""
    image = tf.cast(image, tf.float32)
    if image.shape[-1] == 2:
        return tf.complex(image[..., 0], image[..., 1])
    return tf.complex(image[..., 0], tf.zeros_like(image[..., 0]))


def network_input(image: tf.Tensor, channels: int) -> tf.Tensor:
    """A generator's input from a complex image ``[N, H, W]``: its magnitude ``[N, H, W, 1]`` (``channels=1``)
    or its real and imaginary parts ``[N, H, W, 2]`` (``channels=2``)."""
    if channels == 2:
        return tf.stack([tf.math.real(image), tf.math.imag(image)], -1)
    return tf.abs(image)[..., None]


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


def batch_arguments(batch: dict) -> tuple:
    """``(zero_filled, kspace, mask, maps or None)`` of an evaluation batch (single- or multi-coil)."""
    return batch["zero_filled"], batch["kspace"], batch["mask"], batch.get("maps")


def main_output(output) -> tf.Tensor:
    """A network's reconstruction (float32): the output itself, or the ``reconstruction`` entry of a dict
    output (e.g. the refined network's, which also returns its ``refinement`` map)."""
    return tf.cast(output["reconstruction"] if isinstance(output, dict) else output, tf.float32)


def run_network(generator, zero_filled: tf.Tensor, kspace0: tf.Tensor, mask: tf.Tensor, maps: tf.Tensor | None = None):
    """The raw output of ``generator`` for one batch: a single-coil cascade (:func:`takes_kspace`) gets the
    k-space ``kspace0 [N, H, W]`` and ``mask [N, H, W]``; DCI-Net (:func:`takes_coil_kspace`) the coil
    k-space ``[N, C, H, W]`` and ``maps [N, C, H, W]`` (or single-coil k-space, ``maps`` None); an image
    network ``zero_filled [N, H, W, C]``."""
    if takes_coil_kspace(generator):
        return generator(coil_network_inputs(kspace0, mask, maps), training=False)
    if takes_kspace(generator):
        return generator(network_inputs(kspace0, mask), training=False)
    return generator(zero_filled, training=False)


def batch_reconstructor(generator, dc: bool) -> Callable[[dict], tf.Tensor]:
    """A function of an evaluation batch dict (``zero_filled`` or, for a complex generator,
    ``zero_filled_complex``; ``kspace``, ``mask``, ``maps``) -> reconstructed magnitude ``[B, H, W, 1]``,
    or for a refined network ``{"image": …, "refinement": λ·V [B, H, W, 1]}``.

    RecNet cascades take single-coil k-space only; DCI-Net either.
    """
    cascade = takes_kspace(generator)
    key = "zero_filled" if takes_coil_kspace(generator) or (not cascade and generator.input_shape[-1] == 1) \
        else "zero_filled_complex"

    def reconstruct(zero_filled, kspace0, mask, maps):
        raw = run_network(generator, zero_filled, kspace0, mask, maps)
        out = main_output(raw)
        image = apply_dc(out, kspace0, mask, maps) if dc else tf.abs(as_complex_image(out))[..., None]
        return {"image": image, "refinement": raw["refinement"]} if isinstance(raw, dict) else image

    run = tf.function(reconstruct, reduce_retracing=True, autograph=False)  # dc is a Python constant

    def call(batch):
        if cascade and batch.get("maps") is not None:
            raise DaganError("this network is a single-coil k-space cascade; the split holds multi-coil k-space")
        return run(batch[key], *batch_arguments(batch)[1:])

    return call


def load_run_reconstructor(run_dir: str | Path, dc: bool = False) -> Callable[[dict], tf.Tensor]:
    """The run's batch reconstructor (see :func:`batch_reconstructor`)."""
    return batch_reconstructor(load_run_generator(run_dir, inference=True)[0], dc)
