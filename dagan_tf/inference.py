"""Reconstruct evaluation batches with a network (of a run folder, :mod:`dagan_tf.training.trained`).

A reconstruction maps an evaluation batch (undersampled k-space, its mask and zero-filled image) through the
network's contract (:mod:`dagan_tf.models.network_io`) to a magnitude ``[N, H, W, 1]``; with data consistency (``dc=True``) the network output's
k-space is replaced by the measurements on the mask (hard DC) and the magnitude
is returned — the paper's "future work", off by default as in the paper.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import tensorflow as tf

from dagan_tf import recipes
from dagan_tf.contract import NetworkContract
from dagan_tf.data.batches import KSpaceBatch
from dagan_tf.models.network_io import as_complex_image, magnitude_or_dc, run_network
from dagan_tf.training.trained import load_run_network


def batch_reconstructor(network, contract: NetworkContract, dc: bool) -> Callable[[KSpaceBatch], tf.Tensor | dict]:
    """A function of an evaluation :class:`~dagan_tf.data.batches.KSpaceBatch` ->
    the reconstructed magnitude ``[B, H, W, 1]`` (:func:`run_network`, :func:`magnitude_or_dc`), or with extras
    ``{"image": …, **extras}``."""
    def reconstruct(zero_filled, kspace0, mask, maps):
        out, extras = run_network(network, contract, as_complex_image(zero_filled), kspace0, mask, maps)
        image = magnitude_or_dc(out, kspace0, mask, maps, dc)
        return {"image": image, **extras} if extras else image

    run = tf.function(reconstruct, reduce_retracing=True, autograph=False)  # dc is a Python constant
    return lambda batch: run(batch.zero_filled_complex, batch.kspace, batch.mask, batch.maps)


def load_run_reconstructor(run_dir: str | Path, dc: bool = False) -> Callable[[KSpaceBatch], tf.Tensor]:
    """The run's batch reconstructor (see :func:`batch_reconstructor`)."""
    network, config = load_run_network(run_dir, inference=True)
    return batch_reconstructor(network, recipes.network_contract(config), dc)
