"""A trained run's network: built from its recipe through the trainer registry, its best weights (else its newest
intact checkpoint) loaded.  Evaluation, comparison, prediction, export and a refinement's stage 1 load runs here."""
from __future__ import annotations

import warnings
from pathlib import Path

import keras
import tensorflow as tf

from dagan_tf import recipes
from dagan_tf.errors import DaganError
from dagan_tf.hardware import keras_policy, precision_policy
from dagan_tf.models.layers import inference_copy
from dagan_tf.training.callbacks import checkpoints_newest_first


def build_network(config: dict) -> keras.Model:
    """The network of a validated recipe (untrained), from the registry entry of its ``trainer`` key."""
    return recipes.trainer_of(config).load().build_network(config)


def load_run_network(run_dir: str | Path, inference: bool = False, precision: str = "float32"):
    """``(network, config)`` of a run, with its best weights (else the newest intact checkpoint).

    With ``inference`` the network is its inference copy (:func:`~dagan_tf.models.layers.inference_copy`: the
    same outputs within 1e-5 of their scale, faster on this machine, not for training into the run's checkpoints);
    ``eval``, ``compare``,
    ``predict`` and ``export`` use it.  ``precision`` (``float32`` or ``bfloat16``,
    :func:`dagan_tf.hardware.inference_precision`) is the compute precision of its layers, whatever the training
    precision; variables, inputs, outputs and data consistency stay float32.
    Raises :class:`DaganError` for weights that are truncated or do not fit the run's config.
    """
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise DaganError(f"{run_dir} is not a training run (no config.yaml)")
    config = recipes.load_config_file(run_dir / "config.yaml")
    with precision_policy(keras_policy(precision)):
        network = build_network(config)
        _load_trained_weights(network, run_dir)
        return (inference_copy(network) if inference else network), config


def _load_trained_weights(network, run_dir: Path) -> None:
    """Load ``run_dir``'s best weights into ``network``, else its newest intact checkpoint."""
    best = run_dir / "best.weights.h5"
    if best.is_file():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # Keras warns (and loads partly) on some mismatches
                network.load_weights(str(best))
        except Exception as exc:  # h5py OSError (truncated), ValueError (shapes), KeyError (layers)
            raise DaganError(f"cannot load {best}: {str(exc).splitlines()[0][:200]} "
                             "(truncated, or not trained with this config.yaml?)") from None
        return
    for path in checkpoints_newest_first(run_dir / "checkpoints"):
        try:
            tf.train.Checkpoint(generator=network).restore(path).expect_partial()  # its checkpoint key
            return
        except Exception:  # a damaged checkpoint: try the next older one
            continue
    raise DaganError(f"{run_dir} has no trained weights yet (no best.weights.h5, no intact checkpoint)")
