"""Pieces every trainer shares: the base trainer model, magnitudes of network outputs, the BCE on logits,
validation quality metrics."""
from __future__ import annotations

import keras
import tensorflow as tf

from dagan_tf import metrics as quality
from dagan_tf.contract import NetworkContract
from dagan_tf.data.batches import Batch, ImagePair
from dagan_tf.models.network_io import as_complex_image, network_inputs, split_output
from dagan_tf.training.distribute import replica_weight

QUALITY = ("nmse", "psnr", "ssim")


def magnitude(images: tf.Tensor) -> tf.Tensor:
    """``[B, H, W, 1]`` magnitude of ``[B, H, W, 1]`` magnitudes (unchanged) or ``[B, H, W, 2]`` real/imaginary
    channels (``√(re² + im² + 1e-12)``: finite gradients at 0), float32."""
    images = tf.cast(images, tf.float32)
    if images.shape[-1] == 1:
        return images
    return tf.sqrt(tf.reduce_sum(tf.square(images), axis=-1, keepdims=True) + 1e-12)


def bce_logits(logits: tf.Tensor, label: float) -> tf.Tensor:
    """Mean sigmoid cross-entropy of ``logits`` (any shape) against the constant ``label``."""
    logits = tf.cast(logits, tf.float32)
    return tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(tf.fill(tf.shape(logits), label), logits))


def quality_metrics(trackers: dict, target: tf.Tensor, output: tf.Tensor) -> dict:
    """Update the ``nmse``/``psnr``/``ssim`` mean trackers with magnitudes ``[B, H, W, 1]`` (per-batch data
    range, :mod:`dagan_tf.metrics`); their results."""
    for name, fn in zip(QUALITY, (quality.nmse, quality.psnr, quality.ssim)):
        trackers[name].update_state(fn(target, output))
    return {name: trackers[name].result() for name in QUALITY}


class TrainerModel(keras.Model):
    """Base of every trainer: what the shared run machinery (:mod:`dagan_tf.training.run`) uses.

    ``network`` is the network inference uses (a GAN's generator; its weights go to ``best.weights.h5``),
    ``adversary`` a GAN's discriminator or critic (else ``None``), ``contract`` what the network takes and returns
    (:func:`dagan_tf.recipes.network_contract`); ``trackers`` the mean metrics by name; ``compile`` sets
    ``network_optimizer`` (and ``adversary_optimizer`` for GANs) and builds their slots so a checkpoint can be
    restored before the first step.  ``call`` runs the network.  The base owns validation: :meth:`test_step`
    scores :meth:`reconstruct` against :meth:`target` (NMSE, PSNR, SSIM); a trainer adds ``train_step``.

    Batches are :class:`~dagan_tf.data.batches.ImagePair` or :class:`~dagan_tf.data.batches.KSpaceBatch`, by
    the registry entry's ``batches``.
    """

    def __init__(self, network: keras.Model, contract: NetworkContract, tracker_names,
                 adversary: keras.Model | None = None, **kwargs):
        super().__init__(**kwargs)
        self.network, self.adversary = network, adversary
        self.contract = contract
        self.trackers = {name: keras.metrics.Mean(name=name) for name in tracker_names}
        self.network_optimizer = self.adversary_optimizer = None
        self.batch_stage = None  # raw training batch -> batch, run in the step (data.augment_on: device)
        self.built = True  # the networks are built: no symbolic build on a batch (a dict is no network input)

    def compile(self, network_optimizer: keras.optimizers.Optimizer,
                adversary_optimizer: keras.optimizers.Optimizer | None = None, **kwargs):
        """Under the ``mixed_float16`` policy each optimizer is wrapped in Keras' dynamic
        :class:`keras.optimizers.LossScaleOptimizer` (:meth:`minimise` scales the loss for it)."""
        super().compile(**kwargs)
        if keras.mixed_precision.global_policy().name == "mixed_float16":
            network_optimizer = keras.optimizers.LossScaleOptimizer(network_optimizer)
            if adversary_optimizer is not None:
                adversary_optimizer = keras.optimizers.LossScaleOptimizer(adversary_optimizer)
        self.network_optimizer, self.adversary_optimizer = network_optimizer, adversary_optimizer
        network_optimizer.build(self.network.trainable_variables)
        if adversary_optimizer is not None:
            adversary_optimizer.build(self.adversary.trainable_variables)

    @staticmethod
    def scaled_gradients(optimizer: keras.optimizers.Optimizer, tape: tf.GradientTape, loss: tf.Tensor,
                         variables) -> list:
        """Gradients of ``loss`` (float32 scalar, a mean over this replica's examples, recorded by ``tape``) for
        ``optimizer``: those of the replica's share of the global-batch mean
        (:func:`dagan_tf.training.distribute.replica_weight`), times the loss scale of a ``LossScaleOptimizer``
        (which unscales them, and skips the step on overflow)."""
        weight = optimizer.scale_loss(tf.constant(replica_weight(), tf.float32))
        return tape.gradient(loss, variables, output_gradients=weight)

    def minimise(self, optimizer: keras.optimizers.Optimizer, tape: tf.GradientTape, loss: tf.Tensor,
                 variables) -> None:
        """One ``optimizer`` step on ``loss`` (:meth:`scaled_gradients`)."""
        optimizer.apply_gradients(zip(self.scaled_gradients(optimizer, tape, loss, variables), variables))

    @property
    def optimizers(self) -> list[keras.optimizers.Optimizer]:
        """Optimizers whose learning rate the schedule sets."""
        return [o for o in (self.network_optimizer, self.adversary_optimizer) if o is not None]

    def checkpoint_objects(self) -> dict:
        """Everything a checkpoint must hold to resume training exactly (subclasses add their state).  The keys
        keep their first names, so checkpoints of earlier versions resume."""
        objects = {"generator": self.network, "g_optimizer": self.network_optimizer}
        if self.adversary is not None:
            objects.update(discriminator=self.adversary, d_optimizer=self.adversary_optimizer)
        # the random state of dropout layers (Keras seed generators), which tf.train.Checkpoint does not see
        networks = [self.network] + ([self.adversary] if self.adversary is not None else [])
        seeds = [v.value for net in networks for v in net.variables if v.path.endswith("seed_generator_state")]
        return objects | ({"seed_states": seeds} if seeds else {})

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        """Nothing to build (the networks, trackers and optimizers are).  Keras' version, run under a
        distribution strategy, would draw a batch from the training stream and, under
        MultiWorkerMirroredStrategy, fails to reduce a structure of per-replica tensors (Keras 3.15)."""

    def make_train_function(self, force=False):
        """Keras' training function; with a ``batch_stage`` the step first finishes its raw batch."""
        if self.train_function is None or force:
            stage = self.batch_stage
            step = self.train_step if stage is None else (lambda data: self.train_step(stage(data)))
            self.train_function = self._make_function(step)
        return self.train_function

    def _make_function(self, step_function):
        """Keras' step function; under MultiWorkerMirroredStrategy the step's scalar logs become ``[1]``
        vectors, which Keras 3 averages over the workers to scalars (it fails on scalars: "Invalid reduction
        dimension 0", tensorflow/tensorflow#72388)."""
        if isinstance(self.distribute_strategy, tf.distribute.MultiWorkerMirroredStrategy):
            step = step_function

            def step_function(data):
                return {name: tf.reshape(value, [1]) for name, value in step(data).items()}

        return super()._make_function(step_function)

    @property
    def metrics(self):
        return list(self.trackers.values())

    def network_inputs(self, batch: Batch):
        """The network's input of a batch: an image pair's zero-filled image; a k-space batch's inputs by the
        contract (:func:`dagan_tf.models.network_io.network_inputs`)."""
        if isinstance(batch, ImagePair):
            return batch.zero_filled
        return network_inputs(self.contract, as_complex_image(batch.zero_filled_complex), batch.kspace,
                              batch.mask, batch.maps)

    @staticmethod
    def target(batch: Batch) -> tf.Tensor:
        """The fully sampled magnitude ``[B, H, W, 1]`` (float32) of a batch."""
        return magnitude(batch.target)

    def reconstruct(self, batch: Batch) -> tf.Tensor:
        """The magnitude ``[B, H, W, 1]`` (float32) of the network's reconstruction of a batch, inference mode."""
        return magnitude(split_output(self.contract, self.network(self.network_inputs(batch), training=False))[0])

    def test_step(self, batch):
        return quality_metrics(self.trackers, self.target(batch), self.reconstruct(batch))

    def call(self, inputs, training=False):
        return self.network(inputs, training=training)
