"""Wasserstein GAN training of DCI-Net with Adaptive Gradient Balancing (Malkiel et al. 2019) as a ``keras.Model``.

Batches are :class:`~dagan_tf.data.batches.KSpaceBatch` (multi-coil: coil k-space and maps;
single-coil works as one coil with unit sensitivity).  One ``train_step`` on a batch, for the recipe's
``critic.kind`` (``none`` = DCI-Net trained on the MSE alone, ``image`` = the plain WGAN critic on the
magnitude, ``pair`` = the cWGAN critic on (zero-filled, image) magnitudes):

1. ``critic.steps`` critic updates on the batch (Alg. 1 draws a fresh minibatch for each; with the default
   one step that is the same thing):
   ``L_D = (mean D(z, |G|) − mean D(z, x)) / β``, then every critic weight clipped to ``[−c, c]``;
2. one generator update: ``L_G = w_adv · (−mean D(z, |G|)) / β + w_mse · MSE``, the MSE over the
   real/imaginary channels of the output and of the complex target (``loss.mse_on: complex``) or of their
   magnitudes (``magnitude``);
3. with AGB (Algorithm 1): ``g_gan``, ``g_mse`` = the gradients of the two weighted terms with respect to the
   generated image, ``gma ← λ·gma + (1 − λ)·std(g_gan)``, ``pma ← λ·pma + (1 − λ)·std(g_mse)`` and, when
   ``gma > pma·ratio``, ``β ← β(1 + rate)``, ``gma ← gma(1 − rate)`` (:func:`agb_update`).  Without AGB,
   ``β = 1``.  β, gma and pma are variables in the checkpoint and, with AGB, in the logs (``agb_beta``,
   ``agb_gma``, ``agb_pma`` in TensorBoard and history.csv).

Sign conventions are the text's (the critic's loss and the generator's loss are minimised; Alg. 1 as printed
adds its Adam steps).  ``test_step`` reports NMSE, PSNR and SSIM of the output's magnitude, like every trainer.
"""
from __future__ import annotations

from dataclasses import dataclass

import keras
import tensorflow as tf

from dagan_tf.contract import NetworkContract
from dagan_tf.data.batches import KSpaceBatch
from dagan_tf.models.dcinet import build_dcinet, build_wgan_critic
from dagan_tf.recipes import network_contract
from dagan_tf.training.common import QUALITY, TrainerModel, magnitude
from dagan_tf.training.distribute import replica_weight, replicas_in_sync, replicas_mean
from dagan_tf.training.optimizers import adam

CRITIC_KINDS = ("none", "image", "pair")


@dataclass(frozen=True)
class WassersteinSettings:
    """The recipe's loss, critic and AGB constants (names as in the recipe; module doc)."""

    mse_weight: float = 1.0
    mse_on: str = "complex"
    adversarial_weight: float = 1.0
    critic: str = "pair"
    clip: float = 0.01
    critic_steps: int = 1
    agb: bool = True
    beta_init: float = 10.0
    ratio: float = 10.0
    rate: float = 0.1
    ema: float = 0.99


def agb_update(beta, gma, pma, gan_std, mse_std, ratio: float, rate: float, ema: float):
    """One step of Algorithm 1's balancing: the new ``(β, gma, pma)`` from the gradient standard deviations
    of this step (scalars; tensors or floats)."""
    gma = gma * ema + (1.0 - ema) * gan_std
    pma = pma * ema + (1.0 - ema) * mse_std
    grow = gma > pma * ratio
    return tf.where(grow, beta * (1.0 + rate), beta), tf.where(grow, gma * (1.0 - rate), gma), pma


def batch_std(values: tf.Tensor) -> tf.Tensor:
    """Standard deviation of every element of ``values`` over the global batch (each replica holds an equal
    slice; from the replicas' means of ``x`` and ``x²``)."""
    if replicas_in_sync() == 1:
        return tf.math.reduce_std(values)
    mean, square = replicas_mean(tf.reduce_mean(values)), replicas_mean(tf.reduce_mean(tf.square(values)))
    return tf.sqrt(tf.maximum(square - tf.square(mean), 0.0))


class WassersteinGAN(TrainerModel):
    """Trains DCI-Net (``generator``) with the MSE and, unless ``settings.critic == "none"``, a clipped
    Wasserstein critic, balanced by AGB (module doc)."""

    def __init__(self, generator: keras.Model, contract: NetworkContract, critic: keras.Model | None,
                 settings: WassersteinSettings,
                 **kwargs):
        names = ("g_loss", "g_mse") + (("c_loss", "g_adversarial") if critic is not None else ()) + QUALITY
        super().__init__(generator, contract, names, critic, **kwargs)
        self.settings = settings
        start = settings.beta_init if settings.agb else 1.0
        same = tf.VariableAggregation.ONLY_FIRST_REPLICA  # every replica assigns the same value
        self.beta = tf.Variable(start, dtype=tf.float32, trainable=False, name="agb_beta", aggregation=same)
        self.gma = tf.Variable(0.0, dtype=tf.float32, trainable=False, name="agb_gma", aggregation=same)
        self.pma = tf.Variable(0.0, dtype=tf.float32, trainable=False, name="agb_pma", aggregation=same)

    def checkpoint_objects(self) -> dict:
        return super().checkpoint_objects() | {"agb_beta": self.beta, "agb_gma": self.gma, "agb_pma": self.pma}

    def critic_value(self, batch: KSpaceBatch, image: tf.Tensor) -> tf.Tensor:
        """Mean critic value ``D(z, image)`` (or ``D(image)``) over the batch, training mode."""
        if self.settings.critic == "pair":
            image = tf.concat([tf.cast(batch.zero_filled, tf.float32), image], axis=-1)
        return tf.reduce_mean(tf.cast(self.adversary(image, training=True), tf.float32))

    def critic_step(self, batch: KSpaceBatch, fake: tf.Tensor) -> tf.Tensor:
        """One critic update on ``fake`` magnitudes ``[B, H, W, 1]``, then weight clipping; the critic loss."""
        variables = self.adversary.trainable_variables
        with tf.GradientTape() as tape:
            loss = (self.critic_value(batch, fake) - self.critic_value(batch, batch.target)) / self.beta
        self.minimise(self.adversary_optimizer, tape, loss, variables)
        c = self.settings.clip
        for v in variables:
            v.assign(tf.clip_by_value(v, -c, c))
        return loss

    def train_step(self, batch):
        s = self.settings
        inputs = self.network_inputs(batch)
        logs = {}
        with tf.GradientTape(persistent=True) as tape:
            output = tf.cast(self.network(inputs, training=True), tf.float32)
            tape.watch(output)
            if self.adversary is not None:  # the critic steps see this output: G does not change in them
                with tape.stop_recording():
                    fake = tf.stop_gradient(magnitude(output))
                    for _ in range(s.critic_steps):
                        logs["c_loss"] = self.critic_step(batch, fake)
            if s.mse_on == "complex":
                mse = tf.reduce_mean(tf.square(output - batch.target_complex))
            else:
                mse = tf.reduce_mean(tf.square(magnitude(output) - batch.target))
            weighted_mse = s.mse_weight * mse
            g_loss = weighted_mse
            if self.adversary is not None:
                adversarial = -self.critic_value(batch, magnitude(output)) / self.beta
                weighted_adversarial = s.adversarial_weight * adversarial
                g_loss = g_loss + weighted_adversarial
        self.minimise(self.network_optimizer, tape, g_loss, self.network.trainable_variables)
        if self.adversary is not None and s.agb:
            share = tf.constant(replica_weight(), tf.float32)  # this replica's part of the global gradients
            gan_std = batch_std(tape.gradient(weighted_adversarial, output, output_gradients=share))
            mse_std = batch_std(tape.gradient(weighted_mse, output, output_gradients=share))
            for var, value in zip((self.beta, self.gma, self.pma),
                                  agb_update(self.beta, self.gma, self.pma, gan_std, mse_std, s.ratio, s.rate, s.ema)):
                var.assign(value)
        del tape
        logs.update(g_loss=g_loss, g_mse=mse)
        if self.adversary is not None:
            logs["g_adversarial"] = adversarial
        result = {}
        for name, value in logs.items():
            self.trackers[name].update_state(value)
            result[name] = self.trackers[name].result()
        if self.adversary is not None and s.agb:
            result.update(agb_beta=self.beta.value(), agb_gma=self.gma.value(), agb_pma=self.pma.value())
        return result


def settings_of(config: dict) -> WassersteinSettings:
    loss, critic, agb = config["loss"], config["critic"], config["agb"]
    return WassersteinSettings(loss["mse"], loss["mse_on"], loss["adversarial"], critic["kind"], critic["clip"],
                               critic["steps"], agb["enabled"], agb["beta_init"], agb["ratio"], agb["rate"],
                               agb["ema"])


def build_network(config: dict) -> keras.Model:
    """DCI-Net of the recipe's ``model`` section."""
    m = config["model"]
    return build_dcinet(m["image_size"], m["iterations"], m["growth"], m["filters"], m["kernel_size"],
                        m["residual"])


def build_trainer(config: dict) -> WassersteinGAN:
    """The compiled trainer: Adam (the recipe's learning rate and β1, β2 0.999) for DCI-Net and the critic."""
    settings, t = settings_of(config), config["train"]
    critic = None
    if settings.critic != "none":
        critic = build_wgan_critic(config["model"]["image_size"], settings.critic == "pair",
                                   config["critic"]["filters"])
    model = WassersteinGAN(build_network(config), network_contract(config), critic, settings)
    model.compile(network_optimizer=adam(t), adversary_optimizer=None if critic is None else adam(t))
    return model
