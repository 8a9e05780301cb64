"""Supervised MSE training of a k-space cascade (RecNet, stage 1 of Seitzer et al. 2018) as a ``keras.Model``.

Batches are the k-space dicts of :mod:`dagan_tf.data.pipeline` (``with_kspace=True``):
the network sees :func:`dagan_tf.models.recnet.network_inputs` of ``kspace`` and
``mask``; the loss is ``mean((y − x)²)`` over the real/imaginary channels of the output
``y`` and of the complex target ``target_complex`` ``[B, H, W, 2]`` (images on the [0, 1]
magnitude scale).  ``test_step`` reports NMSE, PSNR and SSIM of the output's magnitude
(:mod:`dagan_tf.metrics`, per-batch data range), like every trainer.
"""
from __future__ import annotations

import keras
import tensorflow as tf

from dagan_tf.models.recnet import build_recnet, network_inputs
from dagan_tf.training.common import QUALITY, TrainerModel, magnitude, quality_metrics
from dagan_tf.training.optimizers import adam

def batch_inputs(batch: dict) -> dict[str, tf.Tensor]:
    """A cascade's inputs from a k-space batch dict."""
    return network_inputs(batch["kspace"], batch["mask"])


class SupervisedCascade(TrainerModel):
    """Trains ``generator`` (a cascade) with the MSE loss; ``call`` runs it."""

    def __init__(self, generator: keras.Model, **kwargs):
        super().__init__(generator, ("loss", *QUALITY), **kwargs)

    def reconstruct(self, batch: dict) -> tf.Tensor:
        """Magnitude ``[B, H, W, 1]`` of the network's output for a k-space batch dict, inference mode."""
        return magnitude(self.generator(batch_inputs(batch), training=False))

    def train_step(self, batch):
        with tf.GradientTape() as tape:
            output = tf.cast(self.generator(batch_inputs(batch), training=True), tf.float32)
            loss = tf.reduce_mean(tf.square(output - batch["target_complex"]))
        self.minimise(self.g_optimizer, tape, loss, self.generator.trainable_variables)
        self.trackers["loss"].update_state(loss)
        return {"loss": self.trackers["loss"].result()}

    def test_step(self, batch):
        return quality_metrics(self.trackers, batch["target"], self.reconstruct(batch))


def build_generator(config: dict) -> keras.Model:
    """RecNet of the recipe's ``model`` and ``cascade`` sections (the refinement's stage 1 too)."""
    c = config["cascade"]
    return build_recnet(config["model"]["image_size"], c["blocks"], c["convs"], c["filters"], c["residual"],
                        c["kernel_size"])


def build_trainer(config: dict) -> SupervisedCascade:
    """The compiled trainer (:func:`~dagan_tf.training.optimizers.adam` of the recipe), optimizer built."""
    t = config["train"]
    model = SupervisedCascade(build_generator(config))
    model.compile(g_optimizer=adam(t))
    return model
