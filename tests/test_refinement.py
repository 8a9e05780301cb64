"""RecNet (stage 1) and the gated refinement GAN (stage 2) of Seitzer et al.: layers, losses, pool, runs."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from conftest import SIZE, assert_resume_is_exact, assert_user_error, run, saved_model_cli_run
from dagan_tf import kspace as ks
from dagan_tf import recipes
from dagan_tf.export import kspace_planes
from dagan_tf.training.trained import load_run_network
from dagan_tf.models.recnet import build_recnet, from_channels, network_inputs
from dagan_tf.models.refinement import (RefinedNetwork, build_patch_discriminator, build_refinement_unet,
                                        to_signed)
from dagan_tf.training.refinement import ImagePool, LossNormaliser, feature_matching
from dagan_tf.training.run import train

COMMON = [f"model.image_size={SIZE}", "data.ratio=0.3", "train.batch_size=4", "train.val_batch_size=8",
          "train.steps_per_epoch=3", "train.epochs=2", "train.deterministic=true", "train.precision=float32"]


def recnet_config(*extra):
    return recipes.apply_overrides(recipes.load_recipe("recnet"), COMMON + ["cascade.filters=8", *extra])


def refinement_config(stage1, *extra):
    return recipes.apply_overrides(recipes.load_recipe("refinement"), COMMON + [
        f"stage1.run={stage1}", "model.width=0.25", "discriminator.layers=3", "discriminator.width=0.125",
        "discriminator.pool_size=6", "vgg.weights=random", "vgg.network=vgg16", "vgg.layer=block2_conv2", *extra])


@pytest.fixture(scope="module")
def recnet_run(tmp_path_factory, real_slices):
    out = tmp_path_factory.mktemp("recnet") / "run"
    train(out, recnet_config(), real_slices)
    return out


@pytest.fixture(scope="module")
def refinement_run(tmp_path_factory, real_slices, recnet_run):
    out = tmp_path_factory.mktemp("refinement") / "run"
    train(out, refinement_config(recnet_run), real_slices)
    return out


def _measurements(n=2, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.random((n, SIZE, SIZE)).astype(np.float32)
    mask = (rng.random((SIZE, SIZE)) < 0.3).astype(np.float32)
    k0, _ = ks.undersample(image, mask)
    return k0, mask


@pytest.mark.parametrize("residual", [False, True])
def test_recnet_output_holds_the_measured_kspace_exactly(residual):
    k0, mask = _measurements()
    out = build_recnet(SIZE, blocks=2, convs=3, filters=4, residual=residual)(network_inputs(k0, mask))
    k_out = ks.fft2c(from_channels(out)).numpy()
    sampled = mask.astype(bool)
    np.testing.assert_allclose(k_out[:, sampled], k0.numpy()[:, sampled], atol=2e-6)
    assert np.abs(k_out[:, ~sampled]).max() > 1e-3  # the network filled the rest


def test_recnet_initialisers_follow_the_public_code():
    net = build_recnet(SIZE, blocks=1, convs=3, filters=64)
    first, second = net.get_layer("block0_conv0").kernel.numpy(), net.get_layer("block0_conv1").kernel.numpy()
    assert np.abs(first).max() <= np.sqrt(6 / (9 * 2 + 9 * 64)) + 1e-7  # Xavier-uniform bound
    np.testing.assert_allclose(second.std(), np.sqrt(2 / (1 + 0.01 ** 2) / (9 * 64)), rtol=0.05)  # He, a=0.01
    assert not net.get_layer("block0_conv1").bias.numpy().any()


def test_gate_at_zero_gives_recnet_exactly_and_the_change_map_scales_back():
    k0, mask = _measurements()
    recnet = build_recnet(SIZE, filters=4)
    refined = RefinedNetwork(recnet, build_refinement_unet(SIZE, width=0.25))
    inputs = network_inputs(k0, mask)
    out = refined(inputs)
    np.testing.assert_array_equal(out["reconstruction"].numpy(), recnet(inputs).numpy())
    assert not out["refinement"].numpy().any()
    refined.gate.gate.assign(0.3)
    reconstruction, change, delta = refined.forward(inputs)
    y = recnet(inputs).numpy()
    span = y[..., :1].max(axis=(1, 2), keepdims=True) - y[..., :1].min(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(change.numpy(), 0.3 * delta.numpy() * span / 2, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(reconstruction.numpy()[..., 0], y[..., 0] + change.numpy()[..., 0], atol=1e-6)
    np.testing.assert_array_equal(reconstruction.numpy()[..., 1], y[..., 1])  # imaginary part kept


def test_scaling_to_signed_range_per_example_and_channel():
    x = tf.constant(np.random.default_rng(0).normal(size=(3, 8, 8, 2)), tf.float32)
    s = to_signed(x).numpy()
    np.testing.assert_allclose(s.min(axis=(1, 2)), -1, atol=1e-6)
    np.testing.assert_allclose(s.max(axis=(1, 2)), 1, atol=1e-6)


def test_patch_discriminator_matches_the_public_code_geometry():
    d = build_patch_discriminator(6, width=1 / 16)
    outputs = d(tf.zeros([1, 512, 512, 1]), training=False)
    assert len(outputs) == 7 and outputs[-1].shape == (1, 13, 13, 1)  # six features + 13×13 logits at 512²
    assert [o.shape[1] for o in outputs[:6]] == [256, 128, 64, 32, 16, 16]
    assert [layer.name for layer in d.layers if "dropout" in layer.name] == ["d3_dropout", "d4_dropout",
                                                                             "d5_dropout"]
    assert d.get_layer("d0").use_bias and not d.get_layer("d1").use_bias


def test_image_pool_fills_then_swaps_with_probability():
    pool = ImagePool(3, (1,), probability=0.5, seed=7)
    first = pool(tf.constant([[1.0], [2.0]]))
    np.testing.assert_array_equal(first.numpy(), [[1], [2]])  # filling: images pass through
    second = pool(tf.constant([[3.0], [4.0], [5.0]]))
    assert second.numpy()[0, 0] == 3 and int(pool.count.numpy()) == 3  # the third image fills the pool
    # the pool's draws, replayed by hand from the same generator state
    replay = tf.random.Generator.from_seed(7)
    replay.uniform([2]), replay.uniform([2], 0, 3, dtype=tf.int32)
    u, j = replay.uniform([3]).numpy(), replay.uniform([3], 0, 3, dtype=tf.int32).numpy()
    stored = [1.0, 2.0, 3.0]
    for i, value in ((1, 4.0), (2, 5.0)):
        expected = value
        if u[i] < 0.5:
            expected, stored[j[i]] = stored[j[i]], value
        assert second.numpy()[i, 0] == expected
    np.testing.assert_array_equal(pool.images.numpy()[:, 0], stored)
    draws = ImagePool(4, (1,), seed=1)(tf.zeros([4, 1]))  # shown images stay images of the batch
    assert draws.shape == (4, 1)


def test_feature_matching_and_normalisation_by_hand():
    real = [tf.constant([[1.0, 2.0]]), tf.constant([[0.0, 0.0, 3.0]])]
    fake = [tf.constant([[1.5, 2.0]]), tf.constant([[1.0, 0.0, 0.0]])]
    # (|1-1.5| + 0)/2 = 0.25 ; (1 + 0 + 3)/3 = 4/3 ; mean over features = (0.25 + 4/3) / 2
    np.testing.assert_allclose(feature_matching(real, fake).numpy(), (0.25 + 4 / 3) / 2, rtol=1e-6)
    normaliser = LossNormaliser()
    np.testing.assert_allclose(normaliser(tf.constant([2.0, 4.0, 0.0, 0.5])).numpy(), [1, 1, 0, 1])
    np.testing.assert_allclose(normaliser(tf.constant([1.0, 8.0, 3.0, 0.25])).numpy(), [0.5, 2, 3, 0.5])
    np.testing.assert_allclose(normaliser.scales.numpy(), [2, 4, 1, 0.5])


def test_recnet_and_refinement_runs_train_and_keep_their_state(recnet_run, refinement_run):
    recnet, config = load_run_network(recnet_run)
    assert config["trainer"] == "supervised"
    refined, config = load_run_network(refinement_run)
    assert isinstance(refined, RefinedNetwork) and config["cascade"]["filters"] == 8
    for a, b in zip(refined.recnet.weights, recnet.weights):  # the frozen stage 1 is RecNet's best weights
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert float(refined.gate.gate.numpy()) != 0.0  # λ moved from 0
    # train.keep: last (the code's choice): best.weights.h5 holds the last epoch's generator
    from dagan_tf.training.callbacks import checkpoints_newest_first
    from dagan_tf.training.refinement import build_network

    last = build_network(config)
    tf.train.Checkpoint(generator=last).restore(checkpoints_newest_first(refinement_run / "checkpoints")[0]) \
        .expect_partial()
    for a, b in zip(refined.weights, last.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_refinement_resume_continues_exactly(tmp_path, real_slices, recnet_run):
    _, refined = assert_resume_is_exact(refinement_config(recnet_run), real_slices, tmp_path)
    assert float(refined.gate.gate.numpy()) != 0.0  # λ (part of the compared weights) is restored too


def test_stage1_errors_are_one_line(tmp_path, real_slices, recnet_run, trained_run):
    out = tmp_path / "r"
    base = ["train", "--recipe", "refinement", "--data", real_slices, "--out", out,
            "--set", f"model.image_size={SIZE}", "--set", "data.ratio=0.3"]
    assert_user_error(run(*base), "stage1.run is required", output=out)
    assert_user_error(run(*base, "--set", f"stage1.run={tmp_path / 'nope'}"), "not a training run", output=out)
    assert_user_error(run(*base, "--set", f"stage1.run={trained_run}"), "needs a RecNet run", output=out)
    assert_user_error(run(*base, "--set", f"stage1.run={recnet_run}", "--set", "data.ratio=0.25"),
                      "data.ratio = 0.3", output=out)
    assert_user_error(run(*base, "--set", f"stage1.run={recnet_run}"), "PatchGAN needs images of at least 128",
                      output=out)


def test_eval_export_predict_of_a_refinement_run(tmp_path, real_slices, refinement_run):
    import json

    out = tmp_path / "eval"
    result = run("eval", "--run", refinement_run, "--data", real_slices, "--split", "val", "--no-baselines",
                 "--out", out)
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"zero_filled", "stage1", "model"} <= set(metrics)
    assert metrics["model"]["refinement"]["max_abs"] > 0 and (out / "refinement_model.png").is_file()
    # λ is small after 2 epochs: the refined network stays within a hair of its RecNet
    assert abs(metrics["model"]["psnr"]["mean"] - metrics["stage1"]["psnr"]["mean"]) < 0.5

    export = tmp_path / "export"
    assert run("export", refinement_run, "--out", export, "--precision", "float32").exit_code == 0
    loaded = tf.saved_model.load(str(export))
    k0, mask = _measurements(3, seed=4)
    masks = np.broadcast_to(mask, k0.shape).astype(np.float32)
    served = loaded.signatures["serving_default"](kspace_real=tf.math.real(k0), kspace_imag=tf.math.imag(k0),
                                                  mask=tf.constant(masks))
    refined, _ = load_run_network(refinement_run)
    direct = refined(network_inputs(k0, mask))
    np.testing.assert_allclose(served["reconstruction"].numpy(),
                               tf.abs(from_channels(direct["reconstruction"]))[..., None].numpy(), atol=1e-5)
    np.testing.assert_allclose(served["refinement"].numpy(), direct["refinement"].numpy(), atol=1e-6)
    planes = {name: plane.numpy() for name, plane in kspace_planes(k0[:1], masks[:1]).items()}
    from_cli = saved_model_cli_run(export, "serving_default", planes, tmp_path)   # TF Serving's loader
    for key in ("reconstruction", "refinement"):
        np.testing.assert_allclose(from_cli[key], served[key].numpy()[:1], atol=1e-5)

    from conftest import phantom_volume, write_nifti
    import nibabel as nib

    source = write_nifti(tmp_path / "in.nii.gz", phantom_volume(SIZE, 6))
    volumes = {}
    for name, model in (("export", export), ("run", refinement_run)):
        result = run("predict", "--model", model, "--input", source, "--out", tmp_path / f"{name}.nii.gz",
                     "--mask", "gaussian1d", "--ratio", "0.3")
        assert result.exit_code == 0, result.output
        volumes[name] = nib.load(str(tmp_path / f"{name}.nii.gz")).get_fdata()
        volumes[f"{name} change"] = nib.load(str(tmp_path / f"{name}_refinement.nii.gz")).get_fdata()
    np.testing.assert_allclose(volumes["export"], volumes["run"], atol=1e-3 * np.abs(volumes["run"]).max())
    np.testing.assert_allclose(volumes["export change"], volumes["run change"],
                               atol=1e-3 * np.abs(volumes["run"]).max())
    assert np.abs(volumes["run change"]).max() > 0 and volumes["run change"].shape == volumes["run"].shape
