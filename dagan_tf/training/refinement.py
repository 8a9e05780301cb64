"""Stage 2 of Seitzer et al. (2018): adversarial and perceptual refinement of a frozen RecNet.

Each ``train_step`` on a :class:`~dagan_tf.data.batches.KSpaceBatch`, ``x`` the
magnitude target, ``x̂`` the magnitude of the refined network's reconstruction and Δ
the refinement U-Net's ungated output:

* discriminator loss ``BCE(D(pool(x̂)), 0) + BCE(D(x), real_label)``: one-sided label
  smoothing (real label 0.9) and the experience-replay pool (:class:`ImagePool`) on fakes;
* generator (V and λ) loss ``w_adv·BCE(D(x̂), 1) + w_fm·FM + w_vgg·VGG + w_pen·‖Δ‖₁`` with
  FM = mean over the discriminator's features (leaky-ReLU outputs after dropout, and the
  logits) of ``mean |f(x) − f(x̂)|`` (real features held constant), VGG = ``mean (φ(x) −
  φ(x̂))²``, ‖Δ‖₁ = ``mean |Δ|``.  With ``normalise`` (the paper) each term is divided by its
  value at the first training step (:class:`LossNormaliser`): the paper's M, N, O, and α such
  that the penalty starts at ``w_pen``; weights (0.5, 0.5, 1, 0.1).  Without, the public
  code's fixed weights (0.5, 1, 10, 2).

Both losses are computed from the same discriminator weights before either update
(one forward pass, then both updates), as the paper describes; the public PyTorch 0.3
code back-propagated G through weights D had just updated in place, a quirk not kept.
λ, the replay pool (its images, fill count and random generator) and the normalisation
constants are checkpointed, so ``--resume`` continues with the same state.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import keras
import tensorflow as tf

from dagan_tf.contract import NetworkContract
from dagan_tf.data.batches import KSpaceBatch
from dagan_tf.errors import DaganError
from dagan_tf.models.refinement import (RefinedNetwork, build_patch_discriminator, build_refinement_unet,
                                        min_discriminator_size)
from dagan_tf.models.vgg import VGGFeatures
from dagan_tf.recipes import network_contract
from dagan_tf.training.common import QUALITY, TrainerModel, bce_logits, magnitude
from dagan_tf.training.distribute import replicas_mean
from dagan_tf.training.optimizers import adam
from dagan_tf.training.supervised import build_network as build_recnet

TERMS = ("g_adversarial", "g_feature_matching", "g_vgg", "g_penalty")
STAGE1_DATA_KEYS = ("mask", "ratio", "mask_seed", "acs", "per_sample_masks", "regime")


@dataclass(frozen=True)
class RefinementWeights:
    """Generator loss weights in :data:`TERMS` order (paper with normalisation: 0.5, 0.5, 1, 0.1)."""

    adversarial: float = 0.5
    feature_matching: float = 0.5
    vgg: float = 1.0
    penalty: float = 0.1

    def as_tensor(self) -> tf.Tensor:
        return tf.constant([self.adversarial, self.feature_matching, self.vgg, self.penalty], tf.float32)


class LossNormaliser(tf.Module):
    """Divides each loss term by its value at the first call (the paper's M, N, O and 1/α·w_pen).

    ``scales`` ``[4]`` and ``ready`` are variables, checkpointed with the trainer.  A term that is 0 at
    the first call keeps scale 1.
    """

    def __init__(self, n_terms: int = len(TERMS)):
        super().__init__(name="loss_normaliser")
        same = tf.VariableAggregation.ONLY_FIRST_REPLICA  # every replica assigns the same value
        self.scales = tf.Variable(tf.ones([n_terms]), trainable=False, name="scales", aggregation=same)
        self.ready = tf.Variable(False, trainable=False, name="ready", aggregation=same)

    def __call__(self, terms: tf.Tensor) -> tf.Tensor:
        """``terms [4] / scales`` (scales fixed on the first call from ``terms`` averaged over the replicas)."""
        first = replicas_mean(tf.stop_gradient(terms))
        first = tf.where(first > 0, first, tf.ones_like(first))
        scales = tf.where(self.ready, self.scales, first)
        self.scales.assign(scales)
        self.ready.assign(True)
        return terms / scales


class ImagePool(tf.Module):
    """Experience replay of generated images (Shrivastava et al.; the public code's ``ImagePool``).

    Per image, in order: while fewer than ``size`` images are stored, the image is stored and
    passed through; afterwards, with probability ``probability`` a random stored image is
    returned and replaced by the current one, else the current image passes.  Random draws come
    from a seeded ``tf.random.Generator`` (checkpointed with the images and the count).

    Under a distribution strategy each replica keeps a pool of its own (``size`` images of its
    slices of the batches) and draws from its own random stream; a checkpoint holds the first
    replica's pool, from which every replica resumes.
    """

    def __init__(self, size: int, image_shape, probability: float = 0.5, seed: int = 0):
        super().__init__(name="image_pool")
        self.size, self.probability = size, probability
        local = {"synchronization": tf.VariableSynchronization.ON_READ,
                 "aggregation": tf.VariableAggregation.ONLY_FIRST_REPLICA}
        self.images = tf.Variable(tf.zeros([max(size, 1), *image_shape]), trainable=False, name="images", **local)
        self.count = tf.Variable(0, dtype=tf.int32, trainable=False, name="count", **local)
        self.rng = tf.random.Generator.from_seed(seed)

    def __call__(self, images: tf.Tensor) -> tf.Tensor:
        """``[B, *image_shape]`` -> the images the discriminator sees, same shape."""
        images = tf.cast(images, tf.float32)
        if self.size == 0:
            return images
        n = tf.shape(images)[0]
        draws = self.rng.uniform([n])
        picks = self.rng.uniform([n], 0, self.size, dtype=tf.int32)

        def step(i, pool, count, out):
            full = count >= self.size
            swap = tf.logical_and(full, draws[i] < self.probability)
            slot = tf.where(full, picks[i], count)
            stored = pool[slot]
            image = images[i]
            kept = tf.where(tf.logical_and(full, tf.logical_not(swap)), stored, image)
            pool = tf.tensor_scatter_nd_update(pool, [[slot]], kept[None])
            return i + 1, pool, tf.minimum(count + 1, self.size), out.write(i, tf.where(swap, stored, image))

        _, pool, count, out = tf.while_loop(
            lambda i, *_: i < n, step,
            (tf.constant(0), self.images.read_value(), self.count.read_value(), tf.TensorArray(tf.float32, n)))
        self.images.assign(pool)
        self.count.assign(count)
        return tf.reshape(out.stack(), tf.shape(images))


def feature_matching(real_features: list[tf.Tensor], fake_features: list[tf.Tensor]) -> tf.Tensor:
    """Mean over features of ``mean |f(real) − f(fake)|``; the real features are held constant."""
    return tf.add_n([tf.reduce_mean(tf.abs(tf.stop_gradient(tf.cast(r, tf.float32)) - tf.cast(f, tf.float32)))
                     for r, f in zip(real_features, fake_features)]) / len(real_features)


class RefinementGAN(TrainerModel):
    """Trains the refinement U-Net and λ of ``generator`` (a :class:`RefinedNetwork`) against a PatchGAN."""

    def __init__(self, generator: RefinedNetwork, contract: NetworkContract, discriminator: keras.Model,
                 features: VGGFeatures | None,
                 weights: RefinementWeights, normalise: bool, pool: ImagePool, real_label: float = 0.9, **kwargs):
        super().__init__(generator, contract, ("d_loss", "g_loss", *TERMS, "lambda", *QUALITY), discriminator,
                         **kwargs)
        if weights.vgg and features is None:
            raise ValueError("a VGG loss weight needs a feature extractor")
        self.features, self.weights_ = features, weights
        self.normaliser = LossNormaliser() if normalise else None
        self.pool, self.real_label = pool, real_label

    def checkpoint_objects(self) -> dict:
        objects = {**super().checkpoint_objects(), "image_pool": self.pool}
        return objects | ({"loss_normaliser": self.normaliser} if self.normaliser is not None else {})

    def losses_of(self, batch: KSpaceBatch) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        """``(d_loss, generator terms and g_loss)`` from one forward pass with the current weights."""
        real = tf.cast(batch.target, tf.float32)
        reconstruction, _, delta = self.network.forward(self.network_inputs(batch), training=True)
        fake = magnitude(reconstruction)
        *real_features, real_logits = self.adversary(real, training=True)
        *fake_features, fake_logits = self.adversary(fake, training=True)
        pooled_logits = self.adversary(self.pool(tf.stop_gradient(fake)), training=True)[-1]
        d_loss = bce_logits(pooled_logits, 0.0) + bce_logits(real_logits, self.real_label)
        vgg = tf.constant(0.0)
        if self.weights_.vgg:
            vgg = tf.reduce_mean(tf.square(self.features(real) - self.features(fake)))
        raw = tf.stack([bce_logits(fake_logits, 1.0),
                        feature_matching(real_features + [real_logits], fake_features + [fake_logits]),
                        vgg, tf.reduce_mean(tf.abs(tf.cast(delta, tf.float32)))])
        scaled = raw if self.normaliser is None else self.normaliser(raw)
        terms = dict(zip(TERMS, tf.unstack(raw)))
        terms["g_loss"] = tf.reduce_sum(self.weights_.as_tensor() * scaled)
        return d_loss, terms

    def train_step(self, batch):
        with tf.GradientTape(persistent=True) as tape:
            d_loss, terms = self.losses_of(batch)
        d_vars, g_vars = self.adversary.trainable_variables, self.network.trainable_variables
        d_grads = self.scaled_gradients(self.adversary_optimizer, tape, d_loss, d_vars)
        g_grads = self.scaled_gradients(self.network_optimizer, tape, terms["g_loss"], g_vars)
        del tape
        self.adversary_optimizer.apply_gradients(zip(d_grads, d_vars))
        self.network_optimizer.apply_gradients(zip(g_grads, g_vars))
        logs = {"d_loss": d_loss, **terms, "lambda": self.network.gate.gate}
        for name, value in logs.items():
            self.trackers[name].update_state(value)
        return {name: self.trackers[name].result() for name in logs}


def build_network(config: dict) -> RefinedNetwork:
    """The refined network of a recipe: RecNet (``cascade`` section, untrained) + V + λ."""
    m = config["model"]
    recnet = build_recnet(config)
    unet = build_refinement_unet(m["image_size"], 2, m["width"])
    return RefinedNetwork(recnet, unet, m["part"], m["scaled_input"])


def prepare_config(config: dict, echo=lambda _: None) -> dict:
    """Check ``stage1.run`` (a finished RecNet run, same mask and regime) and adopt its ``cascade`` section."""
    from dagan_tf import recipes

    run = config["stage1"]["run"]
    if run is None:
        raise DaganError("recipe key stage1.run is required: the RecNet run to refine "
                         "(--set stage1.run=RUN, a folder made by 'dagan-tf train --recipe recnet')")
    if not (Path(run) / "config.yaml").is_file():
        raise DaganError(f"stage1.run {run} is not a training run (no config.yaml)")
    stage1 = recipes.load_config_file(Path(run) / "config.yaml")
    if stage1["trainer"] != "supervised":
        raise DaganError(f"stage1.run {run} is a {stage1['recipe']} run (trainer {stage1['trainer']}); "
                         "the refinement needs a RecNet run (trainer supervised)")
    for key in STAGE1_DATA_KEYS:
        if stage1["data"][key] != config["data"][key]:
            raise DaganError(f"stage1.run {run} was trained with data.{key} = {stage1['data'][key]!r}, this "
                             f"recipe has {config['data'][key]!r}; set them equal (--set data.{key}=…)")
    if stage1["cascade"] != config["cascade"]:
        echo(f"cascade settings taken from the stage-1 run {run}: {stage1['cascade']}")
    return {**config, "cascade": dict(stage1["cascade"]), "stage1": {"run": str(Path(run).resolve())}}


def build_trainer(config: dict) -> RefinementGAN:
    """The compiled refinement trainer; RecNet's weights come from ``stage1.run``."""
    from dagan_tf.training.trained import load_run_network

    m, d, loss, t = config["model"], config["discriminator"], config["loss"], config["train"]
    smallest = min_discriminator_size(d["layers"])
    if m["image_size"] < smallest:
        raise DaganError(f"the {d['layers']}-layer PatchGAN needs images of at least {smallest}², got "
                         f"{m['image_size']}²; lower discriminator.layers")
    generator = build_network(config)
    stage1, _ = load_run_network(config["stage1"]["run"])
    generator.recnet.set_weights(stage1.get_weights())
    features = VGGFeatures.from_recipe(config["vgg"]) if loss["perceptual"] else None
    weights = RefinementWeights(loss["adversarial"], loss["feature_matching"], loss["perceptual"], loss["penalty"])
    pool = ImagePool(d["pool_size"], (m["image_size"], m["image_size"], 1), d["pool_probability"], t["seed"])
    model = RefinementGAN(generator, network_contract(config), build_patch_discriminator(d["layers"], d["width"], d["dropout"]), features,
                          weights, loss["normalise"], pool, d["real_label"])
    model.compile(network_optimizer=adam(t), adversary_optimizer=adam(t))
    return model
