"""Run by tests/test_distribute.py in a subprocess (logical devices must be set before TensorFlow starts).

One training step of every trainer, with its Adam made SGD-like (ε ≫ |g|: an update that, unlike Adam's
usual one, shows how the gradients are scaled), on two logical CPU devices under MirroredStrategy and on one device, from the same weights and the
same global batch of the real pipeline.  Prints one JSON line: per trainer, the largest difference of the two
updates relative to the network's largest update (the worse of generator and discriminator), and AGB's β and
gma both ways; and the error of a run whose global batch (3) the replicas cannot share ("odd_batch").

Usage: python replica_step.py PREPARED MULTICOIL WORK
"""
import json
import sys
from pathlib import Path

import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from conftest import tiny_config  # noqa: E402
from test_cwgan import tiny_wasserstein  # noqa: E402
from test_refinement import recnet_config, refinement_config  # noqa: E402

from dagan_tf import recipes  # noqa: E402
from dagan_tf.data.batches import LabelledBatch  # noqa: E402
from dagan_tf.data.pipeline import training_dataset  # noqa: E402
from dagan_tf.data.prepare import load_split  # noqa: E402
from dagan_tf.training.distribute import make_strategy, synchronise_batch_norm  # noqa: E402
from dagan_tf.training import refinement  # noqa: E402
from dagan_tf.training.run import build_trainer, mask_spec, train  # noqa: E402

prepared, multicoil, work = map(Path, sys.argv[1:4])
COMMON = ["train.precision=float32", "train.sync_batch_norm=true", "train.batch_size=4"]


def batches(config):
    """The first global batch of the recipe's training stream (segmenter: images and 3-class labels)."""
    data = multicoil if config["trainer"] == "wasserstein" else prepared
    split = load_split(data, "train")
    kind = recipes.trainer_of(config).batch_kind(config)
    if kind == "labels":
        images = split.images[:4, ..., None].astype(np.float32)
        labels = ((images[..., 0] > 0.3).astype(np.int32) + (images[..., 0] > 0.7))
        return tf.data.Dataset.from_tensors(LabelledBatch(images, labels)).repeat()
    ds, _ = training_dataset(split, 4, mask_spec(config), 0, 0, None, kind == "kspace", "magnitude")
    return ds.take(1).cache().repeat()


# One strategy of each kind for the whole process: two MirroredStrategy objects would reuse collective keys.
STRATEGIES = {name: make_strategy(name) for name in ("mirrored", "one-device")}


def update(strategy_name, config):
    """The change of every network variable after one step (0.1 × gradient), and the trainer."""
    keras.utils.set_random_seed(0)
    with STRATEGIES[strategy_name].scope():
        model = build_trainer(config)
    for optimizer in model.optimizers:  # Adam with ε ≫ |g|: the first step is lr·g/ε = 0.1·g, as SGD
        optimizer.epsilon = 1e6
        optimizer.learning_rate.assign(1e5)
    synchronise_batch_norm(model)
    networks = [model.network] + ([model.adversary] if model.adversary is not None else [])
    before = [[v.numpy() for v in net.weights] for net in networks]
    model.fit(batches(config), steps_per_epoch=1, epochs=1, verbose=0)
    return [[v.numpy() - b for v, b in zip(net.weights, old)] for net, old in zip(networks, before)], model


stage1 = work / "recnet"
train(stage1, recnet_config("train.steps_per_epoch=1", "train.epochs=1"), prepared)
configs = {
    "conditional_gan": tiny_config("ppgr", *COMMON),
    "supervised": recnet_config(*COMMON),
    "refinement": refinement.prepare_config(refinement_config(stage1, *COMMON, "discriminator.dropout=0")),
    "segmentation": recipes.apply_overrides(recipes.load_recipe("segmenter"),
                                            ["model.image_size=32", "model.classes=3", *COMMON]),
    "wasserstein": tiny_wasserstein("cwgan-agb", *COMMON),
}
result = {}
for name, config in configs.items():
    mirrored, two = update("mirrored", config)
    single, one = update("one-device", config)
    assert two.distribute_strategy.num_replicas_in_sync == 2
    relative = []  # per network: the largest difference over the largest update
    for two_way, one_way in zip(mirrored, single):
        scale = max(float(np.abs(d).max()) for d in one_way)
        relative.append(max(float(np.abs(a - b).max()) for a, b in zip(two_way, one_way)) / scale)
    result[name] = {"relative": max(relative), "largest_update": scale}
    if name == "wasserstein":
        result[name]["beta"] = [float(two.beta.numpy()), float(one.beta.numpy())]
        result[name]["gma"] = [float(two.gma.numpy()), float(one.gma.numpy())]
try:  # a global batch the two replicas cannot share evenly
    train(work / "odd", tiny_config("ppgr", "train.batch_size=3"), prepared, strategy="mirrored")
except Exception as error:  # DaganError
    result["odd_batch"] = str(error)
print(json.dumps(result))
