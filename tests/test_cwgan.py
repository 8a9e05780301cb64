"""cWGAN-AGB (Malkiel et al. 2019): DCI-Net's data consistency and dense connections, the AGB rule, weight
clipping, multi-coil augmentation, model selection, resume with β, export parity."""
import json

import numpy as np
import pytest
import tensorflow as tf
from conftest import assert_resume_is_exact, run, saved_model_cli_run

from dagan_tf import kspace as ks
from dagan_tf import recipes
from dagan_tf.data.prepare import load_split
from dagan_tf.masks import MaskSpec
from dagan_tf.models.dcinet import CoilDataConsistency, build_dcinet, network_inputs
from dagan_tf.models.recnet import to_channels
from dagan_tf.training.callbacks import normalised_selection
from dagan_tf.training.wasserstein import agb_update


def _fft2c(x):
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))


def _ifft2c(k):
    return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))


def _complex(rng, *shape):
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)


def tiny_wasserstein(recipe="cwgan-agb", *extra):
    overrides = ["model.image_size=32", "model.iterations=3", "model.growth=2", "model.filters=4",
                 "data.ratio=0.25", "data.acs=6", "train.batch_size=2", "train.val_batch_size=4",
                 "train.steps_per_epoch=2", "train.epochs=2", "train.deterministic=true"]
    if recipe != "dcinet":
        overrides.append("critic.filters=4")
    return recipes.apply_overrides(recipes.load_recipe(recipe), overrides + list(extra))


def test_dc_unit_with_weight_one_is_hard_replacement_and_matches_numpy_with_coils():
    rng = np.random.default_rng(0)
    x, mask = _complex(rng, 2, 16, 16), (rng.random((2, 16, 16)) < 0.4).astype(np.float32)
    k0 = _complex(rng, 2, 1, 16, 16) * mask[:, None]
    dc = CoilDataConsistency()
    ones = np.ones_like(k0)
    out = dc([to_channels(x), to_channels(k0), to_channels(ones), mask[..., None]]).numpy()
    expected = _ifft2c((1 - mask) * _fft2c(x) + mask * k0[:, 0])  # (1 − m)·F x + m·k0
    np.testing.assert_allclose(out[..., 0] + 1j * out[..., 1], expected, atol=1e-5)
    # 4 coils, learned weight 0.3: x − w·Σ conj(S)·F⁻¹(m·F(S x) − k)
    maps, k0 = _complex(rng, 2, 4, 16, 16), _complex(rng, 2, 4, 16, 16) * mask[:, None]
    dc = CoilDataConsistency(weight=0.3)
    out = dc([to_channels(x), to_channels(k0), to_channels(maps), mask[..., None]]).numpy()
    residual = np.sum(np.conj(maps) * _ifft2c(mask[:, None] * _fft2c(maps * x[:, None]) - k0), axis=1)
    np.testing.assert_allclose(out[..., 0] + 1j * out[..., 1], x - 0.3 * residual, atol=1e-4)


@pytest.mark.parametrize("growth", [1, 3])
def test_dense_connections_give_each_iteration_its_direct_input_and_the_previous_g_outputs(growth):
    net = build_dcinet(16, iterations=6, growth=growth, filters=4)
    for i in range(1, 7):
        # DC output + x_{i-1} ... x_{i-G} (x_0 the zero-filled image), 2 real channels each
        assert net.get_layer(f"it{i}_conv0").input.shape[-1] == 2 * (1 + min(growth, i))
    assert net.output.shape == (None, 16, 16, 2)
    paper = build_dcinet(16, iterations=6, growth=5, filters=40)  # 5x5 kernels, 40 of them, G + 1 = 6 complex
    assert paper.get_layer("it6_conv0").kernel.shape == (5, 5, 2 * 6, 40)


def test_dcinet_on_single_coil_kspace_equals_one_coil_of_unit_sensitivity():
    rng = np.random.default_rng(1)
    net = build_dcinet(16, iterations=2, growth=2, filters=4)
    mask = (rng.random((16, 16)) < 0.5).astype(np.float32)
    k0 = _complex(rng, 3, 16, 16) * mask
    single = net(network_inputs(k0, mask)).numpy()
    coil = net(network_inputs(k0[:, None], mask, np.ones((3, 1, 16, 16), np.complex64))).numpy()
    np.testing.assert_array_equal(single, coil)


def test_agb_update_follows_algorithm_1_on_a_hand_sequence():
    gan_stds, mse_stds = [5.0, 0.1, 20.0, 3.0, 0.0], [0.2, 0.1, 0.05, 1.0, 1.0]
    beta, gma, pma, expected = 10.0, 0.0, 0.0, []
    for g, p in zip(gan_stds, mse_stds):  # Alg. 1 by hand, λ = 0.5, ratio 10, rate 0.1
        gma, pma = 0.5 * gma + 0.5 * g, 0.5 * pma + 0.5 * p
        if gma > pma * 10:
            beta, gma = beta * 1.1, gma * 0.9
        expected.append((beta, gma, pma))
    state = (tf.constant(10.0), tf.constant(0.0), tf.constant(0.0))
    for (g, p), want in zip(zip(gan_stds, mse_stds), expected):
        state = agb_update(*state, tf.constant(g), tf.constant(p), ratio=10.0, rate=0.1, ema=0.5)
        np.testing.assert_allclose([float(v) for v in state], want, rtol=1e-6)
    assert [round(e[0], 4) for e in expected] == [11.0, 12.1, 13.31, 14.641, 14.641]  # step 5: gma < 10·pma


def _trainer(config, multicoil_dir):
    from dagan_tf.data.pipeline import training_dataset
    from dagan_tf.training.run import build_trainer

    d = config["data"]
    batches, _ = training_dataset(load_split(multicoil_dir, "train"), 2, MaskSpec(d["mask"], d["ratio"], acs=d["acs"]),
                                  augment=None, with_kspace=True)
    return build_trainer(config), iter(batches)


def test_critic_weights_stay_clipped_and_beta_grows_by_the_rate(multicoil_dir):
    model, batches = _trainer(tiny_wasserstein("cwgan-agb", "agb.ratio=1.0e-9", "critic.clip=0.005"), multicoil_dir)
    for step in range(3):
        logs = model.train_step(next(batches))
        for v in model.adversary.trainable_variables:
            assert np.abs(v.numpy()).max() <= 0.005 + 1e-9, v.path
        assert float(logs["agb_beta"]) == pytest.approx(10.0 * 1.1 ** (step + 1), rel=1e-5)
    never, batches = _trainer(tiny_wasserstein("cwgan-agb", "agb.ratio=1.0e+9"), multicoil_dir)
    never.train_step(next(batches))
    assert float(never.beta.numpy()) == 10.0 and float(never.pma.numpy()) > 0
    plain, batches = _trainer(tiny_wasserstein("cwgan"), multicoil_dir)
    plain.train_step(next(batches))
    assert float(plain.beta.numpy()) == 1.0 and float(plain.gma.numpy()) == 0.0  # no AGB: β = 1
    mse_only, _ = _trainer(tiny_wasserstein("dcinet"), multicoil_dir)
    assert mse_only.adversary is None


def test_wgan_critic_sees_the_image_and_cwgan_the_pair(multicoil_dir):
    wgan, _ = _trainer(tiny_wasserstein("wgan"), multicoil_dir)
    cwgan, _ = _trainer(tiny_wasserstein("cwgan"), multicoil_dir)
    assert wgan.adversary.input_shape == (None, 32, 32, 1)
    assert cwgan.adversary.input_shape == (None, 32, 32, 2)
    assert cwgan.settings.mse_weight == 100.0 and not cwgan.settings.agb


def test_multicoil_flips_move_coil_images_maps_and_target_together(multicoil_dir):
    from dagan_tf.data.augment import flip_rotate
    from dagan_tf.data.pipeline import training_dataset

    split = load_split(multicoil_dir, "train")
    spec = MaskSpec("vds1d", 0.25, acs=6)
    plain = next(iter(training_dataset(split, 4, spec, seed=5, augment=None, with_kspace=True)[0]))
    moved = next(iter(training_dataset(split, 4, spec, seed=5, augment=flip_rotate(0.0), with_kspace=True)[0]))
    mask, flipped = spec.build((32, 32)), 0
    for b in range(4):
        target = plain.target.numpy()[b, ..., 0]
        row = int(np.argmin(np.abs(split.images - target).sum(axis=(1, 2))))  # the slice of batch row b
        images, maps = _ifft2c(split.kspace[row]), split.maps[0]
        if not np.allclose(moved.target.numpy()[b, ..., 0], target):
            flipped += 1
            images, maps, target = images[..., ::-1], maps[..., ::-1], target[:, ::-1]
        np.testing.assert_allclose(moved.target.numpy()[b, ..., 0], target, atol=1e-6)
        np.testing.assert_allclose(moved.maps.numpy()[b], maps, atol=1e-6)
        np.testing.assert_allclose(moved.kspace.numpy()[b], _fft2c(images) * mask, atol=1e-4)
    assert 0 < flipped < 4


def test_normalised_selection_standardises_each_series_over_the_candidate_epochs():
    scores = [{"epoch": 1, "nmse": 0.10, "fid": 50.0}, {"epoch": 2, "nmse": 0.05, "fid": 80.0},
              {"epoch": 3, "nmse": 0.06, "fid": 40.0}, {"epoch": 4, "nmse": 0.07, "fid": 41.0}]
    nmse, fid = np.array([0.10, 0.05, 0.06, 0.07]), np.array([50.0, 80.0, 40.0, 41.0])
    by_hand = (nmse - nmse.mean()) / nmse.std() + (fid - fid.mean()) / fid.std()
    assert normalised_selection(scores) == 1 + int(np.argmin(by_hand)) == 3
    assert normalised_selection(scores, first_epoch=3) == 3  # both series lowest at epoch 3 of epochs 3-4
    assert normalised_selection(scores, first_epoch=5) is None


def test_resume_is_exact_and_restores_beta(tmp_path, multicoil_dir):
    from dagan_tf.training.callbacks import checkpoints_newest_first

    config = tiny_wasserstein("cwgan-agb", "agb.ratio=1.0e-9")
    whole, _ = assert_resume_is_exact(config, multicoil_dir, tmp_path)

    def beta(folder):
        reader = tf.train.load_checkpoint(checkpoints_newest_first(folder / "checkpoints")[0])
        return reader.get_tensor("agb_beta/.ATTRIBUTES/VARIABLE_VALUE")

    assert beta(whole) == beta(tmp_path / "part") > 10.0
    history = (whole / "history.csv").read_text().splitlines()
    assert "agb_beta" in history[0] and len(history) == 3


def test_fid_nmse_selection_keeps_every_epoch_and_picks_by_the_normalised_sum(tmp_path, multicoil_dir):
    from test_fid import FID_DIR, _shared

    from dagan_tf.training.run import train

    _shared()
    weights = FID_DIR / "fid_inception_2015_12_05.npz"

    config = tiny_wasserstein("dcinet", "train.select=fid_nmse", f"train.fid_weights={weights}", "train.epochs=3")
    train(tmp_path / "r", config, multicoil_dir)
    scores = json.loads((tmp_path / "r" / "selection.json").read_text())
    assert [s["epoch"] for s in scores] == [1, 2, 3] and all(s["fid"] > 0 for s in scores)
    chosen = normalised_selection(scores)
    best = tf.train.load_checkpoint(str(tmp_path / "r" / "checkpoints" / "ckpt-3")).get_tensor(
        "best/.ATTRIBUTES/VARIABLE_VALUE")
    assert best == chosen
    import h5py

    with h5py.File(tmp_path / "r" / "best.weights.h5") as a, \
            h5py.File(tmp_path / "r" / "epochs" / f"epoch-{chosen:04d}.weights.h5") as b:
        def arrays(f):
            out = []
            f.visititems(lambda name, obj: out.append(obj[()]) if hasattr(obj, "shape") else None)
            return out
        for x, y in zip(arrays(a), arrays(b)):
            np.testing.assert_array_equal(x, y)


def test_select_fid_without_weights_is_a_one_line_error(tmp_path, multicoil_dir):
    from conftest import assert_user_error

    result = run("train", "--recipe", "cwgan-agb", "--data", multicoil_dir, "--out", tmp_path / "r",
                 "--set", "train.select=fid_nmse")
    assert_user_error(result, "train.fid_weights", output=tmp_path / "r")


def test_dcinet_export_serves_coil_kspace_like_the_run(tmp_path, multicoil_dir):
    from dagan_tf.data.pipeline import evaluation_dataset, evaluation_masks
    from dagan_tf.training.trained import load_run_network
    from dagan_tf.training.run import train

    train(tmp_path / "r", tiny_wasserstein("cwgan-agb", "train.epochs=1"), multicoil_dir)
    assert run("export", tmp_path / "r", "--out", tmp_path / "e", "--precision", "float32").exit_code == 0
    loaded = tf.saved_model.load(str(tmp_path / "e")).signatures["serving_default"]
    network, config = load_run_network(tmp_path / "r")
    split = load_split(multicoil_dir, "test")
    d = config["data"]
    masks = evaluation_masks(split, MaskSpec(d["mask"], d["ratio"], acs=d["acs"]))
    batch = next(iter(evaluation_dataset(split, 4, masks, with_kspace=True)))
    k, s = batch.kspace, batch.maps
    served = loaded(kspace_real=tf.math.real(k), kspace_imag=tf.math.imag(k), maps_real=tf.math.real(s),
                    maps_imag=tf.math.imag(s), mask=batch.mask)["reconstruction"].numpy()
    out = network(network_inputs(k, batch.mask, s)).numpy()
    np.testing.assert_allclose(served[..., 0], np.hypot(out[..., 0], out[..., 1]), atol=1e-5)
    zero_filled = np.abs(ks.sense_adjoint(k, s).numpy())
    assert not np.allclose(served[..., 0], zero_filled, atol=1e-3)
    planes = {"kspace_real": tf.math.real(k[:1]), "kspace_imag": tf.math.imag(k[:1]), "maps_real": tf.math.real(s[:1]),
              "maps_imag": tf.math.imag(s[:1]), "mask": batch.mask[:1]}
    from_cli = saved_model_cli_run(tmp_path / "e", "serving_default", planes, tmp_path)   # TF Serving's loader
    np.testing.assert_allclose(from_cli["reconstruction"], served[:1], atol=1e-5)
