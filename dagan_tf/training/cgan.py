"""DAGAN's conditional-GAN training scheme as a ``keras.Model``.

Each ``train_step`` follows the original ``train.py`` on one batch
:class:`~dagan_tf.data.batches.ImagePair` (both ``[B, H, W, 1]``, target in [0, 1]; or, for the
complex DAGAN, both ``[B, H, W, 2]`` real/imaginary channels, whose magnitudes
the discriminator, the pixel and the VGG losses see, while the frequency loss
compares complex k-space).  A complex generator ending in data consistency (``model.data_consistency``)
trains on k-space batches (:class:`~dagan_tf.data.batches.KSpaceBatch`) instead: it takes their k-space and
mask, and its target is their ``target_complex``:

1. discriminator update: ``BCE(D(target), 1) + BCE(D(G(zf)), 0)`` (none at adversarial weight 0);
2. generator update on the same batch:
   ``w_adv·BCE(D(G(zf)), 1) + w_pixel·pixel + w_freq·frequency + w_vgg·vgg``.

Losses (original code conventions):

* pixel ``ratio``: ``mean_b ||G − x||₂ / ||x||₂`` on [-1, 1] images (the original's
  "NMSE"); ``mse``: ``mean (G − x)²`` on [-1, 1] images (the paper's MSE).
* frequency: ``mean (|FFT2(G)| − |FFT2(x)|)²`` on [0, 1] images, unnormalised.
* vgg: ``mean (φ(x) − φ(G))²`` with φ from :class:`dagan_tf.models.vgg.VGGFeatures`.

``test_step`` reports NMSE, PSNR and SSIM (:mod:`dagan_tf.metrics`, per-batch
data range) of ``G(zero_filled)`` in inference mode.
"""
from __future__ import annotations

from dataclasses import dataclass

import keras
import tensorflow as tf

from dagan_tf.contract import NetworkContract
from dagan_tf.data.batches import Batch, ImagePair
from dagan_tf.models.dagan import build_discriminator
from dagan_tf.models.dagan import build_generator as build_unet
from dagan_tf.models.srgan import build_resnet_generator, build_srgan_discriminator
from dagan_tf.models.vgg import VGGFeatures, dagan_target_prepro
from dagan_tf.recipes import network_contract
from dagan_tf.training.common import QUALITY, TrainerModel, bce_logits, magnitude
from dagan_tf.training.optimizers import adam

PIXEL_LOSSES = ("ratio", "mse")


@dataclass(frozen=True)
class LossWeights:
    """Weights of the generator loss terms (original code: 15, 0.1, 0.0025, 1).  ``adversarial_warmup_steps``
    (ours; 0 = the papers') ramps the adversarial weight linearly from 0 over the generator's first steps."""

    pixel: float = 15.0
    frequency: float = 0.1
    vgg: float = 0.0025
    adversarial: float = 1.0
    adversarial_warmup_steps: int = 0


def pixel_loss(target: tf.Tensor, output: tf.Tensor, kind: str = "ratio") -> tf.Tensor:
    """Scalar pixel loss on [-1, 1]-scaled ``[B, H, W, 1]`` images (see module doc)."""
    diff = 2.0 * (output - target)
    if kind == "mse":
        return tf.reduce_mean(tf.square(diff))
    norm_diff = tf.sqrt(tf.reduce_sum(tf.square(diff), axis=[1, 2, 3]) + 1e-12)
    norm_ref = tf.sqrt(tf.reduce_sum(tf.square(2.0 * target - 1.0), axis=[1, 2, 3]) + 1e-12)
    return tf.reduce_mean(norm_diff / norm_ref)


def frequency_loss(target: tf.Tensor, output: tf.Tensor) -> tf.Tensor:
    """Frequency loss on unnormalised FFTs.

    Magnitude images ``[B, H, W, 1]`` in [0, 1] (the original): mean squared difference of the
    FFT magnitudes.  Complex images ``[B, H, W, 2]`` (real/imaginary channels): mean squared
    modulus of the difference of the complex k-spaces.
    """
    def fft(x):
        x = tf.cast(x, tf.float32)
        imag = x[..., 1] if x.shape[-1] == 2 else tf.zeros_like(x[..., 0])
        return tf.signal.fft2d(tf.complex(x[..., 0], imag))

    if output.shape[-1] == 2:
        return tf.reduce_mean(tf.square(tf.abs(fft(output) - fft(target))))
    return tf.reduce_mean(tf.square(tf.abs(fft(output)) - tf.abs(fft(target))))


class ConditionalGAN(TrainerModel):
    """Trains ``generator`` against ``discriminator``; ``call`` runs the generator only."""

    def __init__(self, generator: keras.Model, contract: NetworkContract, discriminator: keras.Model, features=None,
                 weights: LossWeights = LossWeights(), pixel_kind: str = "ratio", vgg_target_prepro=None,
                 **kwargs):
        names = ("d_loss", "g_loss", "g_adversarial", "g_pixel", "g_frequency", "g_vgg", *QUALITY)
        super().__init__(generator, contract, names, discriminator, **kwargs)
        if pixel_kind not in PIXEL_LOSSES:
            raise ValueError(f"pixel loss {pixel_kind!r} not in {PIXEL_LOSSES}")
        if weights.vgg and features is None:
            raise ValueError("a VGG loss weight needs a feature extractor")
        self.features = features
        self.loss_weights_ = weights
        self.pixel_kind = pixel_kind
        self.vgg_target_prepro = vgg_target_prepro

    @staticmethod
    def channel_target(batch: Batch) -> tf.Tensor:
        """The target in the generator's channels (float32): an image pair's ``target``, a k-space batch's
        real/imaginary ``target_complex`` ``[B, H, W, 2]``."""
        return tf.cast(batch.target if isinstance(batch, ImagePair) else batch.target_complex, tf.float32)

    def generator_losses(self, inputs, target) -> dict[str, tf.Tensor]:
        """Forward G (training mode) on its ``inputs`` (:meth:`network_inputs`) and D on its output; the weighted
        terms and their sum ``g_loss``."""
        w = self.loss_weights_
        output = tf.cast(self.network(inputs, training=True), tf.float32)
        fake, real = magnitude(output), magnitude(target)
        terms = {
            "g_adversarial": bce_logits(self.adversary(fake, training=True), 1.0) if w.adversarial
            else tf.constant(0.0),
            "g_pixel": pixel_loss(real, fake, self.pixel_kind),
            "g_frequency": frequency_loss(target, output) if w.frequency else tf.constant(0.0),
            "g_vgg": tf.constant(0.0),
        }
        if w.vgg:
            reference = real if self.vgg_target_prepro is None else self.vgg_target_prepro(real)
            terms["g_vgg"] = tf.reduce_mean(tf.square(self.features(reference) - self.features(fake)))
        terms["g_loss"] = (self.adversarial_weight() * terms["g_adversarial"] + w.pixel * terms["g_pixel"]
                           + w.frequency * terms["g_frequency"] + w.vgg * terms["g_vgg"])
        return terms

    def adversarial_weight(self) -> tf.Tensor:
        """The adversarial weight at this generator step: ``adversarial · min(1, (step + 1) / warm-up)``, a function
        of the checkpointed optimizer step, so a resumed run continues the ramp."""
        w = self.loss_weights_
        if not w.adversarial_warmup_steps:
            return tf.constant(w.adversarial, tf.float32)
        step = tf.cast(self.network_optimizer.iterations + 1, tf.float32)
        return w.adversarial * tf.minimum(1.0, step / float(w.adversarial_warmup_steps))

    def discriminator_step(self, inputs, target) -> tf.Tensor:
        """One discriminator update on magnitudes, real and fake in separate passes (separate batch-norm
        statistics); its loss ``BCE(D(target), 1) + BCE(D(G(inputs)), 0)``."""
        fake = magnitude(self.network(inputs, training=True))
        with tf.GradientTape() as tape:
            d_loss = (bce_logits(self.adversary(magnitude(target), training=True), 1.0)
                      + bce_logits(self.adversary(fake, training=True), 0.0))
        self.minimise(self.adversary_optimizer, tape, d_loss, self.adversary.trainable_variables)
        return d_loss

    def train_step(self, batch: Batch):
        inputs, target = self.network_inputs(batch), self.channel_target(batch)
        # 1. Discriminator (none, nor its generator pass, at adversarial weight 0).
        d_loss = self.discriminator_step(inputs, target) if self.loss_weights_.adversarial else tf.constant(0.0)
        # 2. Generator, on the same batch, against the updated discriminator.
        with tf.GradientTape() as tape:
            terms = self.generator_losses(inputs, target)
        self.minimise(self.network_optimizer, tape, terms["g_loss"], self.network.trainable_variables)
        self.trackers["d_loss"].update_state(d_loss)
        for name, value in terms.items():
            self.trackers[name].update_state(value)
        return {name: self.trackers[name].result() for name in ("d_loss",) + tuple(terms)}


def build_network(config: dict, any_size: bool = False) -> keras.Model:
    """The recipe's generator ``[N, S, S, C] -> [N, S, S, C]`` (in the current dtype policy), DAGAN's U-Net or
    the SRGAN ResNet (``model.generator``); ``C = model.channels`` (1 magnitude, 2 complex); with
    ``model.data_consistency`` the U-Net takes a cascade's k-space inputs.  ``any_size``: the
    ResNet takes any ``S`` (patch training; the same weights)."""
    m = config["model"]
    if m["generator"] == "resnet":
        return build_resnet_generator(None if any_size else m["image_size"], m["width"], m["blocks"], m["refine"],
                                      m["channels"], m["zero_init_output"])
    return build_unet(m["image_size"], m["width"], m["refine"], m["max_depth"], channels=m["channels"],
                      zero_init_output=m["zero_init_output"], data_consistency=m["data_consistency"])


def build_trainer(config: dict) -> ConditionalGAN:
    """The ConditionalGAN of a validated recipe, compiled (Adam, β1 from the recipe), optimizers built."""
    m, loss, vgg, t = config["model"], config["loss"], config["vgg"], config["train"]
    features = None
    if loss["perceptual"]:
        features = VGGFeatures.from_recipe(vgg)
    weights = LossWeights(loss["pixel"], loss["frequency"], loss["perceptual"], loss["adversarial"],
                          loss["adversarial_warmup_steps"])
    discriminator = build_srgan_discriminator(m["width"]) if m["discriminator"] == "srgan" \
        else build_discriminator(m["image_size"], m["width"])
    patches = config["data"]["patch_size"] is not None
    model = ConditionalGAN(build_network(config, any_size=patches), network_contract(config), discriminator,
                           features, weights, loss["pixel_kind"],
                           dagan_target_prepro if vgg["target_prepro"] == "dagan" else None)
    model.compile(network_optimizer=adam(t), adversary_optimizer=adam(t))
    return model
