"""Load a trained generator (from a run folder or an export) and reconstruct batches.

A reconstruction maps a zero-filled magnitude ``[N, H, W, 1]`` in [0, 1] to
``[N, H, W, 1]``; with data consistency (``dc=True``) the network output's
k-space is replaced by the measurements on the mask (hard DC) and the magnitude
is returned — the paper's "future work", off by default as in the paper.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import tensorflow as tf

from dagan_tf import kspace as ks
from dagan_tf import recipes
from dagan_tf.errors import DaganError


def load_run_generator(run_dir: str | Path):
    """``(generator, config)`` of a run, with its best weights (else the latest checkpoint)."""
    from dagan_tf.training.run import generator_from_config, precision_policy

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise DaganError(f"{run_dir} is not a training run (no config.yaml)")
    config = recipes.load_config_file(run_dir / "config.yaml")
    with precision_policy("float32"):  # inference in float32 whatever the training precision
        generator = generator_from_config(config)
    best = run_dir / "best.weights.h5"
    if best.is_file():
        generator.load_weights(str(best))
    else:
        latest = tf.train.latest_checkpoint(str(run_dir / "checkpoints"))
        if latest is None:
            raise DaganError(f"{run_dir} has no trained weights yet")
        tf.train.Checkpoint(generator=generator).restore(latest).expect_partial()
    return generator, config


def apply_dc(image: tf.Tensor, kspace0: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """Hard data consistency of ``[N, H, W, 1]`` magnitude images with centred ``kspace0 [N, H, W]``."""
    return tf.abs(ks.data_consistency_image(tf.cast(image[..., 0], tf.float32), kspace0, mask))[..., None]


def batch_reconstructor(generator: Callable, dc: bool) -> Callable[[dict], tf.Tensor]:
    """A function of an evaluation batch dict (``zero_filled``, ``kspace``, ``mask``) -> reconstruction."""

    def reconstruct(zero_filled, kspace0, mask):
        out = tf.cast(generator(zero_filled, training=False), tf.float32)
        return apply_dc(out, kspace0, mask) if dc else out

    run = tf.function(reconstruct, reduce_retracing=True, autograph=False)  # dc is a Python constant
    return lambda batch: run(batch["zero_filled"], batch["kspace"], batch["mask"])


def load_run_reconstructor(run_dir: str | Path, dc: bool = False):
    """``(reconstructor, mask_args)``: the run's batch reconstructor and its recipe's mask settings."""
    generator, config = load_run_generator(run_dir)
    d = config["data"]
    mask_args = (str(d["mask"]), d["ratio"], int(d["mask_seed"]), d["acs"], bool(d["per_sample_masks"]))
    return batch_reconstructor(generator, dc), mask_args
