"""Adding a method touches its own files only: a toy method, defined and registered in this test alone (its network,
its trainer, one registry entry and a recipe), trains, evaluates, exports, predicts and compares through the
package's commands, and every path gives the same reconstruction as its network run by hand."""
from __future__ import annotations

import json

import keras
import nibabel as nib
import numpy as np
import pytest
import tensorflow as tf

from conftest import SIZE, phantom_volume, run, write_nifti
from dagan_tf import recipes
from dagan_tf.schema import Field
from dagan_tf.training.common import QUALITY, TrainerModel
from dagan_tf.training.optimizers import adam
from dagan_tf.training.run import train


# --- the toy method: what a new method brings (here, in the test module itself) ---------------------------------
def build_network(config: dict) -> keras.Model:
    """Toy network ``[N, S, S, 1] -> [N, S, S, 1]``: zero-filled magnitude plus a 2-layer residual (starts at the
    identity)."""
    size, width = config["model"]["image_size"], config["model"]["width"]
    inputs = keras.Input((size, size, 1), name="zero_filled")
    x = keras.layers.Conv2D(width, 3, padding="same", activation="relu", name="toy_conv")(inputs)
    x = keras.layers.Conv2D(1, 3, padding="same", kernel_initializer="zeros", name="toy_out")(x)
    return keras.Model(inputs, keras.layers.Add(name="toy_residual")([inputs, x]), name="toy")


class ToyTrainer(TrainerModel):
    """MSE on the magnitude; validation, checkpoints and schedules come from the base and the run."""

    def __init__(self, network, contract):
        super().__init__(network, contract, ("loss", *QUALITY))

    def train_step(self, batch):
        with tf.GradientTape() as tape:
            output = tf.cast(self.network(self.network_inputs(batch), training=True), tf.float32)
            loss = tf.reduce_mean(tf.square(output - self.target(batch)))
        self.minimise(self.network_optimizer, tape, loss, self.network.trainable_variables)
        self.trackers["loss"].update_state(loss)
        return {"loss": self.trackers["loss"].result()}


def build_trainer(config: dict) -> ToyTrainer:
    model = ToyTrainer(build_network(config), recipes.network_contract(config))
    model.compile(network_optimizer=adam(config["train"]))
    return model


TOY_SECTIONS = {"model": {"image_size": Field("int", "image side", 8, 4096),
                          "width": Field("int", "filters of the hidden convolution", 1, 256)}}


@pytest.fixture
def toy(monkeypatch):
    """The toy's one registry entry (this module is its trainer module) and its recipe."""
    monkeypatch.setitem(recipes.TRAINERS, "toy", recipes.Trainer(TOY_SECTIONS, __name__))
    base = recipes.load_recipe("recnet-fast")
    return recipes.validate_config({
        "recipe": "toy", "trainer": "toy", "settings": "ours", "model": {"image_size": SIZE, "width": 4},
        "data": {**base["data"], "mask": "vds1d", "ratio": 0.3, "acs": 4},
        "train": {**base["train"], "epochs": 2, "steps_per_epoch": 3, "batch_size": 4, "val_batch_size": 8,
                  "max_cpu_minutes": None, "deterministic": True, "precision": "float32", "lr": 1e-2}})


def test_a_method_registered_outside_the_package_trains_evaluates_exports_predicts_and_compares(
        toy, tmp_path, prepared_dir):
    from dagan_tf import kspace as ks
    from dagan_tf.models.network_io import network_input
    from dagan_tf.training.trained import load_run_network

    run_dir, export = tmp_path / "toy-run", tmp_path / "toy-export"
    history = train(run_dir, toy, prepared_dir, verbose=0)
    assert len(history["loss"]) == 2 and np.isfinite(history["val_psnr"]).all()
    network, config = load_run_network(run_dir)
    assert network.name == "toy" and config["trainer"] == "toy"
    assert float(np.abs(network.get_layer("toy_out").kernel.numpy()).max()) > 0  # it trained

    result = run("eval", "--run", run_dir, "--data", prepared_dir, "--no-baselines", "--regime", "phase",
                 "--out", tmp_path / "eval")
    assert result.exit_code == 0, result.output
    evaluated = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    result = run("compare", run_dir, "--data", prepared_dir, "--regime", "phase", "--out", tmp_path / "cmp")
    assert result.exit_code == 0, result.output
    compared = json.loads((tmp_path / "cmp" / "phase" / "comparison.json").read_text())
    row = next(r for r in compared["table"] if r["method"] == "toy-run")
    assert float(row["psnr_mean"]) == pytest.approx(evaluated["model"]["psnr"]["mean"], abs=1e-4)

    assert run("export", run_dir, "--out", export, "--precision", "float32").exit_code == 0
    rng = np.random.default_rng(0)
    mask = (rng.random((3, SIZE, SIZE)) < 0.4).astype(np.float32)
    kspace0 = tf.constant(ks.fft2c(tf.constant(rng.random((3, SIZE, SIZE)), tf.complex64)).numpy() * mask)
    by_hand = network(network_input(ks.ifft2c(kspace0), 1), training=False).numpy()
    served = tf.saved_model.load(str(export)).signatures["serving_default"](
        zero_filled=tf.abs(ks.ifft2c(kspace0))[..., None])["reconstruction"].numpy()
    np.testing.assert_allclose(served, np.abs(by_hand), atol=1e-5)

    volume = write_nifti(tmp_path / "v.nii.gz", phantom_volume(SIZE, 6, seed=9))
    outputs = {}
    for source, model in (("run", run_dir), ("export", export)):
        out = tmp_path / f"predict-{source}.nii.gz"
        result = run("predict", "--model", model, "--input", volume, "--out", out, "--precision", "float32")
        assert result.exit_code == 0, result.output
        outputs[source] = np.asarray(nib.load(out).dataobj, np.float32)
    np.testing.assert_allclose(outputs["export"], outputs["run"], atol=1e-5 * float(np.abs(outputs["run"]).max()))
