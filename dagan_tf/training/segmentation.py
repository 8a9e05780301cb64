"""The segmenter behind the semantic interpretability score (SIS, Seitzer et al. 2018), as a ``keras.Model``.

A small 2-D U-Net (:func:`dagan_tf.models.refinement.build_refinement_unet` with one input
channel and ``classes`` logits) trained on fully sampled images ``[B, H, W, 1]`` in [0, 1]
and their label maps ``[B, H, W]`` (``prepare --labels``) with
``w_ce·cross-entropy + w_dice·(1 − mean soft Dice over the foreground classes)``.
``test_step`` reports the hard Dice (argmax) averaged over the foreground classes present
in the batch and ``dice_loss = 1 − dice``, which picks ``best.weights.h5``.
"""
from __future__ import annotations

import keras
import tensorflow as tf

from dagan_tf.contract import NetworkContract
from dagan_tf.data.batches import LabelledBatch
from dagan_tf.data.prepare import check_prepared
from dagan_tf.errors import DaganError
from dagan_tf.models.refinement import build_refinement_unet
from dagan_tf.recipes import network_contract
from dagan_tf.training.common import TrainerModel
from dagan_tf.training.optimizers import adam


def _dice_terms(predicted: tf.Tensor, truth: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Per foreground class over the batch: ``(Σ p·q, Σ p + Σ q)`` of ``[B, H, W, K]`` maps (class 0 dropped)."""
    predicted, truth = predicted[..., 1:], truth[..., 1:]
    axes = [0, 1, 2]
    return (tf.reduce_sum(predicted * truth, axis=axes),
            tf.reduce_sum(predicted, axis=axes) + tf.reduce_sum(truth, axis=axes))


def soft_dice(probabilities: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    """Mean over foreground classes of the batch soft Dice ``2Σpq / (Σp + Σq)``; ``probabilities``
    ``[B, H, W, K]``, integer ``labels [B, H, W]``; classes absent from prediction and truth count 1."""
    overlap, sizes = _dice_terms(probabilities, tf.one_hot(labels, tf.shape(probabilities)[-1]))
    return tf.reduce_mean((2.0 * overlap + 1e-6) / (sizes + 1e-6))


def hard_dice(logits: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    """Mean over the foreground classes present in ``labels`` of the argmax Dice over the batch."""
    classes = tf.shape(logits)[-1]
    truth = tf.one_hot(labels, classes)
    overlap, sizes = _dice_terms(tf.one_hot(tf.argmax(logits, axis=-1, output_type=tf.int32), classes), truth)
    present = tf.reduce_sum(truth[..., 1:], axis=[0, 1, 2]) > 0
    return tf.reduce_mean(tf.boolean_mask(2.0 * overlap / tf.maximum(sizes, 1.0), present))


class Segmenter(TrainerModel):
    """Trains ``generator`` (image -> class logits) with cross-entropy and soft Dice."""

    def __init__(self, network: keras.Model, contract: NetworkContract, cross_entropy: float = 1.0,
                 dice: float = 1.0, **kwargs):
        super().__init__(network, contract, ("loss", "dice", "dice_loss"), **kwargs)
        self.w_ce, self.w_dice = cross_entropy, dice

    def train_step(self, batch: LabelledBatch):
        images, labels = batch.images, batch.labels
        with tf.GradientTape() as tape:
            logits = tf.cast(self.network(images, training=True), tf.float32)
            ce = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
            loss = self.w_ce * ce + self.w_dice * (1.0 - soft_dice(tf.nn.softmax(logits), labels))
        self.minimise(self.network_optimizer, tape, loss, self.network.trainable_variables)
        self.trackers["loss"].update_state(loss)
        return {"loss": self.trackers["loss"].result()}

    def test_step(self, batch: LabelledBatch):
        images, labels = batch.images, batch.labels
        dice = hard_dice(tf.cast(self.network(images, training=False), tf.float32), labels)
        self.trackers["dice"].update_state(dice)
        self.trackers["dice_loss"].update_state(1.0 - dice)
        return {name: self.trackers[name].result() for name in ("dice", "dice_loss")}


def build_network(config: dict) -> keras.Model:
    """The segmentation U-Net ``[N, S, S, 1] -> logits [N, S, S, classes]``."""
    m = config["model"]
    return build_refinement_unet(m["image_size"], 1, m["width"], m["classes"], name="segmenter")


def prepare_config(config: dict, echo=lambda _: None) -> dict:
    """Take ``model.classes`` from the prepared data's labels (an error when it has none)."""
    folder = config["data"]["folder"]
    labels = check_prepared(folder).get("labels")
    if not labels:
        raise DaganError(f"{folder} has no label maps; prepare it with --labels to train a segmenter")
    if labels["classes"] != config["model"]["classes"]:
        echo(f"model.classes {config['model']['classes']} -> {labels['classes']} to match the labels in {folder}")
    return {**config, "model": {**config["model"], "classes": int(labels["classes"])}}


def build_trainer(config: dict) -> Segmenter:
    t, loss = config["train"], config["loss"]
    model = Segmenter(build_network(config), network_contract(config), loss["cross_entropy"], loss["dice"])
    model.compile(network_optimizer=adam(t))
    return model
