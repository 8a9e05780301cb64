"""Distributed training with ``tf.distribute``: the strategy a run uses and the per-replica arithmetic.

Strategies (recipe key ``train.strategy``, ``train --strategy``):

* ``auto``: :class:`tf.distribute.MirroredStrategy` over the GPUs when more than one is visible, else
  TensorFlow's default (single-device) strategy;
* ``one-device``: the first GPU, else the CPU;
* ``mirrored``: one replica per visible GPU (with no GPU, one per logical CPU device: how the tests run two
  replicas on a CPU);
* ``multi-worker``: :class:`tf.distribute.MultiWorkerMirroredStrategy`, configured by the standard
  ``TF_CONFIG`` environment variable (every worker runs the same ``train`` command).

Arithmetic across replicas: every replica computes its losses as means over its own slice of the global
batch; :func:`replica_weight` divides the gradients by the number of replicas before the optimizer sums
them, so an update equals the single-device update on the global batch.  Batch statistics other trainers
need (AGB's gradient spread, the refinement's first loss values) go through :func:`replicas_mean`.
"""
from __future__ import annotations

import json
import os

import keras
import tensorflow as tf

from dagan_tf.errors import DaganError
from dagan_tf.recipes import STRATEGIES


def cluster_spec() -> tuple[dict, dict]:
    """``(cluster, task)`` of the ``TF_CONFIG`` environment variable (``({}, {})`` when unset).

    Raises :class:`DaganError` when it is not valid JSON with a ``cluster`` and a ``task`` naming a member.
    """
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return {}, {}
    try:
        spec = json.loads(raw)
        cluster, task = spec["cluster"], spec["task"]
        members = cluster[task["type"]]
        if not isinstance(members, list) or not 0 <= int(task["index"]) < len(members):
            raise ValueError(f"task index {task['index']} outside {task['type']}'s {len(members)} addresses")
    except (ValueError, KeyError, TypeError) as exc:
        raise DaganError(f"TF_CONFIG is not a valid cluster description ({exc}); expected "
                         '{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": 0}}'
                         ) from None
    return cluster, task


def is_chief() -> bool:
    """Whether this process writes the run folder: the ``chief`` task, or worker 0 of a cluster without one
    (always true outside a cluster)."""
    cluster, task = cluster_spec()
    if not task:
        return True
    if "chief" in cluster:
        return task["type"] == "chief"
    return task["type"] == "worker" and int(task["index"]) == 0


def make_strategy(name: str) -> tf.distribute.Strategy:
    """The ``tf.distribute`` strategy of a ``train.strategy`` value (module doc)."""
    if name == "multi-worker":  # first: it must configure the runtime before anything initialises it
        cluster, _ = cluster_spec()
        if not cluster:
            raise DaganError("train.strategy multi-worker needs the TF_CONFIG environment variable "
                             "(README: 'Several machines')")
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
    devices = gpus or [d.name for d in tf.config.list_logical_devices("CPU")]
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(devices)
    if name == "one-device":
        return tf.distribute.OneDeviceStrategy(devices[0])
    if name == "auto":
        return tf.distribute.MirroredStrategy(gpus) if len(gpus) > 1 \
            else tf.distribute.get_strategy()
    raise DaganError(f"unknown train.strategy {name!r}; valid: {', '.join(STRATEGIES)}")


def describe(strategy: tf.distribute.Strategy) -> str:
    """``'MirroredStrategy, 2 replicas'`` and the like, for the run summary."""
    replicas = strategy.num_replicas_in_sync
    name = "default strategy" if strategy is tf.distribute.get_strategy() and not tf.distribute.has_strategy() \
        else type(strategy).__name__
    return f"{name}, {replicas} replica{'s' if replicas != 1 else ''}"


def synchronise_batch_norm(model) -> None:
    """Make every batch-norm layer of ``model`` (a trainer and its networks) compute its training statistics
    over the global batch (an all-reduce per layer) instead of its replica's slice (``train.sync_batch_norm``)."""
    for layer in model._flatten_layers():
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = True


def replicas_in_sync() -> int:
    """How many replicas compute the current step (1 outside a replica context)."""
    context = tf.distribute.get_replica_context()
    return context.num_replicas_in_sync if context is not None else 1


def replica_weight() -> float:
    """The factor of a replica's mean loss in the global mean: ``1 / replicas`` (optimizers sum the
    replicas' gradients)."""
    return 1.0 / replicas_in_sync()


def replicas_mean(value: tf.Tensor) -> tf.Tensor:
    """The mean of ``value`` over the replicas (``value`` itself on one replica); every replica gets it."""
    if replicas_in_sync() == 1:
        return value
    return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.MEAN, value)
