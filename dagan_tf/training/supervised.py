"""Supervised MSE training of a k-space cascade (RecNet, stage 1 of Seitzer et al. 2018) as a ``keras.Model``.

Batches are :class:`~dagan_tf.data.batches.KSpaceBatch`:
the network sees its inputs by its contract (``kspace`` and ``mask``,
:meth:`~dagan_tf.training.common.TrainerModel.network_inputs`); the loss is ``mean((y − x)²)`` over the real/imaginary channels of the output
``y`` and of the complex target ``target_complex`` ``[B, H, W, 2]`` (images on the [0, 1]
magnitude scale).  ``test_step`` reports NMSE, PSNR and SSIM of the output's magnitude
(:mod:`dagan_tf.metrics`, per-batch data range), like every trainer.
"""
from __future__ import annotations

import keras
import tensorflow as tf

from dagan_tf.contract import NetworkContract
from dagan_tf.models.recnet import build_recnet
from dagan_tf.recipes import network_contract
from dagan_tf.training.common import QUALITY, TrainerModel
from dagan_tf.training.optimizers import adam


class SupervisedCascade(TrainerModel):
    """Trains ``generator`` (a cascade) with the MSE loss; ``call`` runs it."""

    def __init__(self, network: keras.Model, contract: NetworkContract, **kwargs):
        super().__init__(network, contract, ("loss", *QUALITY), **kwargs)

    def train_step(self, batch):
        with tf.GradientTape() as tape:
            output = tf.cast(self.network(self.network_inputs(batch), training=True), tf.float32)
            loss = tf.reduce_mean(tf.square(output - batch.target_complex))
        self.minimise(self.network_optimizer, tape, loss, self.network.trainable_variables)
        self.trackers["loss"].update_state(loss)
        return {"loss": self.trackers["loss"].result()}


def build_network(config: dict) -> keras.Model:
    """RecNet of the recipe's ``model`` and ``cascade`` sections (the refinement's stage 1 too)."""
    c = config["cascade"]
    return build_recnet(config["model"]["image_size"], c["blocks"], c["convs"], c["filters"], c["residual"],
                        c["kernel_size"])


def build_trainer(config: dict) -> SupervisedCascade:
    """The compiled trainer (:func:`~dagan_tf.training.optimizers.adam` of the recipe), optimizer built."""
    t = config["train"]
    model = SupervisedCascade(build_network(config), network_contract(config))
    model.compile(network_optimizer=adam(t))
    return model
