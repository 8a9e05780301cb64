"""The complex-valued DAGAN (recipe ppgr-complex): real/imaginary channels, complex DC, export and predict."""
import json

import numpy as np
import pytest
import tensorflow as tf

from conftest import SIZE, run, tiny_config
from dagan_tf import kspace as ks
from dagan_tf import recipes
from dagan_tf.data.batches import ImagePair
from dagan_tf.models.network_io import apply_dc, as_complex_image
from dagan_tf.training.trained import load_run_network
from dagan_tf.masks import make_mask
from dagan_tf.models.dagan import build_generator
from dagan_tf.training.cgan import frequency_loss
from dagan_tf.training.common import magnitude


def complex_config(*extra):
    base = recipes.load_recipe("ppgr-complex")
    return tiny_config("ppgr", f"model.channels={base['model']['channels']}", f"data.regime={base['data']['regime']}",
                       *extra)


def test_ppgr_complex_recipe_is_complex_in_the_phase_regime():
    config = recipes.load_recipe("ppgr-complex")
    assert config["model"]["channels"] == 2 and config["data"]["regime"] == "phase" and config["model"]["refine"]
    assert recipes.load_recipe("ppgr")["model"]["channels"] == 1  # the faithful recipes stay magnitude


def test_complex_generator_refinement_passes_the_input_through_at_zero_output():
    generator = build_generator(SIZE, 0.125, True, channels=2)
    assert generator.input_shape[-1] == generator.output_shape[-1] == 2
    out_layer = generator.get_layer("out")
    out_layer.kernel.assign(tf.zeros_like(out_layer.kernel))
    out_layer.bias.assign(tf.zeros_like(out_layer.bias))
    x = tf.random.uniform((2, SIZE, SIZE, 2), -0.7, 0.7, seed=1)
    np.testing.assert_allclose(generator(x, training=False).numpy(), x.numpy(), atol=1e-6)  # tanh(0) + x


def test_complex_losses_and_dc():
    rng = np.random.default_rng(0)
    a, b = (tf.constant(rng.uniform(-1, 1, (2, SIZE, SIZE, 2)), tf.float32) for _ in range(2))
    za, zb = as_complex_image(a).numpy(), as_complex_image(b).numpy()
    expected = np.mean(np.abs(np.fft.fft2(za) - np.fft.fft2(zb)) ** 2)
    np.testing.assert_allclose(float(frequency_loss(b, a)), expected, rtol=1e-4)
    np.testing.assert_allclose(magnitude(a).numpy()[..., 0], np.abs(za), atol=1e-5)
    mask = make_mask("vds1d", (SIZE, SIZE), 0.25, seed=0)
    target = tf.constant(rng.uniform(-1, 1, (2, SIZE, SIZE)) + 1j * rng.uniform(-1, 1, (2, SIZE, SIZE)),
                         tf.complex64)
    k0 = ks.fft2c(target) * tf.cast(mask, tf.complex64)
    consistent = ks.data_consistency_image(as_complex_image(a), k0, mask)
    np.testing.assert_allclose((ks.fft2c(consistent) * mask).numpy(), k0.numpy(), atol=1e-5)
    np.testing.assert_allclose(apply_dc(a, k0, mask).numpy()[..., 0], np.abs(consistent.numpy()), atol=1e-6)


@pytest.fixture(scope="module")
def complex_run(tmp_path_factory, real_slices):
    from dagan_tf.training.run import train

    run_dir = tmp_path_factory.mktemp("complex") / "run"
    train(run_dir, complex_config("train.epochs=1"), real_slices, verbose=0)
    return run_dir


def test_complex_run_evaluates_exports_and_predicts(tmp_path, complex_run, real_slices):
    history = (complex_run / "history.csv").read_text().splitlines()
    assert len(history) == 2 and "val_psnr" in history[0]
    result = run("eval", "--run", complex_run, "--no-baselines", "--data", real_slices, "--dc", "--out", tmp_path / "e")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert metrics["regime"] == "phase (seed 0)" and "model+dc" in metrics and "zero_filled_dc1" not in metrics
    assert run("export", complex_run, "--out", tmp_path / "x", "--precision", "float32").exit_code == 0
    loaded = tf.saved_model.load(str(tmp_path / "x"))
    generator, _ = load_run_network(complex_run)
    x = tf.random.uniform((2, SIZE, SIZE, 2), -0.5, 0.5, seed=4)
    np.testing.assert_allclose(loaded.signatures["serving_default"](zero_filled=x)["reconstruction"].numpy(),
                               np.abs(as_complex_image(generator(x, training=False)).numpy())[..., None],
                               atol=1e-5)
    mask = np.broadcast_to(make_mask("vds1d", (SIZE, SIZE), 0.25, seed=0), (2, SIZE, SIZE)).astype(np.float32)
    image = tf.complex(x[..., 0], x[..., 1])
    k0 = ks.fft2c(image) * tf.cast(mask, tf.complex64)
    served = loaded.signatures["from_kspace"](kspace_real=tf.math.real(k0), kspace_imag=tf.math.imag(k0),
                                              mask=tf.constant(mask))["reconstruction"]
    zf = ks.ifft2c(k0)
    own = apply_dc(generator(tf.stack([tf.math.real(zf), tf.math.imag(zf)], -1), training=False), k0, mask)
    np.testing.assert_allclose(served.numpy(), own.numpy(), atol=1e-5)


def test_predict_with_a_complex_export_matches_the_run(tmp_path, complex_run):
    import nibabel as nib

    from conftest import phantom_volume, write_nifti

    source = write_nifti(tmp_path / "in.nii.gz", phantom_volume(SIZE, 6))
    assert run("export", complex_run, "--out", tmp_path / "x", "--precision", "float32").exit_code == 0
    outputs = {}
    for name, model in (("run", complex_run), ("export", tmp_path / "x")):
        out = tmp_path / f"{name}.nii.gz"
        result = run("predict", "--model", model, "--input", source, "--out", out, "--mask", "vds1d",
                     "--ratio", 0.25, "--dc")
        assert result.exit_code == 0, result.output
        outputs[name] = nib.load(str(out)).get_fdata()
    np.testing.assert_allclose(outputs["export"], outputs["run"], atol=1e-3 * outputs["run"].max())


def test_adversarial_warm_up_ramps_with_the_generator_step():
    """loss.adversarial_warmup_steps N: weight · min(1, (step + 1) / N), read from the checkpointed optimizer step."""
    from dagan_tf.training.run import build_trainer

    model = build_trainer(complex_config("loss.adversarial_warmup_steps=4", "loss.adversarial=2.0"))
    seen = []
    for step in (0, 1, 3, 10):
        model.network_optimizer.iterations.assign(step)
        seen.append(float(model.adversarial_weight()))
    np.testing.assert_allclose(seen, [0.5, 1.0, 2.0, 2.0])
    assert float(build_trainer(complex_config("loss.adversarial=2.0")).adversarial_weight()) == 2.0


def test_adversarial_weight_zero_skips_the_discriminator():
    """At loss.adversarial 0 (ppgr-complex-fast) a step leaves the discriminator, its optimizer and the
    adversarial term untouched and minimises the reconstruction terms alone; at a positive weight it trains D."""
    from dagan_tf.training.run import build_trainer

    assert recipes.load_recipe("ppgr-complex-fast")["loss"]["adversarial"] == 0.0
    rng = np.random.default_rng(2)
    target = tf.constant(rng.uniform(-0.5, 0.5, (2, SIZE, SIZE, 2)), tf.float32)
    zero_filled = target + tf.constant(rng.normal(0, 0.1, (2, SIZE, SIZE, 2)), tf.float32)
    for weight in (0.0, 1.0):
        tf.keras.utils.set_random_seed(0)
        model = build_trainer(complex_config(f"loss.adversarial={weight}", "loss.perceptual=0", "train.lr=0.001"))
        before = [w.numpy().copy() for w in model.adversary.trainable_weights]
        losses = [model.train_step(ImagePair(zero_filled, target)) for _ in range(3)]
        moved = max(float(np.abs(w.numpy() - b).max()) for w, b in zip(model.adversary.trainable_weights, before))
        if weight:
            assert moved > 0 and int(model.adversary_optimizer.iterations) == 3
            assert float(losses[-1]["d_loss"]) > 0
            continue
        assert moved == 0 and int(model.adversary_optimizer.iterations) == 0
        assert float(losses[-1]["d_loss"]) == 0 and float(losses[-1]["g_adversarial"]) == 0
        expected = 15.0 * float(losses[-1]["g_pixel"]) + 0.1 * float(losses[-1]["g_frequency"])
        np.testing.assert_allclose(float(losses[-1]["g_loss"]), expected, rtol=1e-5)
        assert float(losses[-1]["g_loss"]) < float(losses[0]["g_loss"])


def test_complex_dagan_learns_from_its_zero_filled_start(real_slices):
    """The fix of the complex DAGAN that did not learn: at the paper's start (a random output layer, full
    adversarial weight) the untrained discriminator's gradient on the generated image dwarfs the reconstruction
    terms' and the output drifts below zero-filled.  The recipe's generator starts at the identity
    (model.zero_init_output) and ramps the adversarial term in: its output starts at zero-filled exactly, and a
    few steps on a phase-regime batch move its residual off zero and its error below zero-filled's."""
    from dagan_tf.data.pipeline import training_dataset
    from dagan_tf.data.prepare import load_split
    from dagan_tf.training.run import build_trainer, mask_spec

    recipe = recipes.load_recipe("ppgr-complex")
    assert recipe["model"]["zero_init_output"] and recipe["loss"]["adversarial_warmup_steps"] > 0
    config = complex_config("model.zero_init_output=true", "loss.adversarial_warmup_steps=1000", "loss.perceptual=0",
                            "train.lr=0.001", "model.width=0.125")
    tf.keras.utils.set_random_seed(0)
    model = build_trainer(config)
    dataset, _ = training_dataset(load_split(real_slices, "train"), 4, mask_spec(config), 0, 0, None, False, "phase",
                                  True)
    zero_filled, target = next(iter(dataset))
    error = lambda x: float(tf.reduce_mean(tf.square(magnitude(x) - magnitude(target))))  # noqa: E731
    start = model.network(zero_filled, training=False)
    # the identity, within the refinement's ramp to [-1, 1] (zero-filled ringing can overshoot it)
    np.testing.assert_allclose(start.numpy(), np.clip(zero_filled.numpy(), -1, 1), atol=1e-6)
    for _ in range(60):
        model.train_step(ImagePair(zero_filled, target))
    out = model.network(zero_filled, training=False)
    residual = float(tf.sqrt(tf.reduce_mean(tf.square(out - zero_filled))))
    assert residual > 1e-3
    assert error(out) < 0.8 * error(zero_filled), (error(out), error(zero_filled))


def centred_fft(x: np.ndarray) -> np.ndarray:
    """numpy's orthonormal centred 2-D FFT over the last two axes (the reference for :func:`ks.fft2c`)."""
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))


def test_generator_ending_in_data_consistency_keeps_the_samples_and_changes_only_the_rest():
    """model.data_consistency: the U-Net's output with its k-space replaced by the measurements on the mask."""
    from dagan_tf.models.recnet import network_inputs

    rng = np.random.default_rng(3)
    mask = make_mask("vds1d", (SIZE, SIZE), 0.25, seed=0).astype(np.float32)
    image = (rng.uniform(0, 0.8, (2, SIZE, SIZE)) * np.exp(1j * rng.uniform(-1, 1, (2, SIZE, SIZE)))).astype(
        np.complex64)
    k0 = centred_fft(image) * mask
    tf.keras.utils.set_random_seed(1)
    plain = build_generator(SIZE, 0.125, True, channels=2)
    plain.get_layer("out").bias.assign([0.3, -0.2])  # a residual well away from zero
    consistent = build_generator(SIZE, 0.125, True, channels=2, data_consistency=True)
    consistent.set_weights(plain.get_weights())
    inputs = network_inputs(tf.constant(k0), tf.constant(mask))
    out = consistent(inputs, training=False).numpy()
    unet = plain(inputs["zero_filled"], training=False).numpy()
    k_out, k_unet = centred_fft(out[..., 0] + 1j * out[..., 1]), centred_fft(unet[..., 0] + 1j * unet[..., 1])
    scale = np.abs(k0).max()
    np.testing.assert_allclose(k_out * mask, k0, atol=1e-5 * scale)
    np.testing.assert_allclose(k_out * (1 - mask), k_unet * (1 - mask), atol=1e-5 * scale)
    assert np.abs(k_unet * mask - k0).max() > 1e-2 * scale  # the U-Net alone does not keep them


def test_data_consistency_makes_the_complex_dagan_a_kspace_network():
    config = complex_config("model.data_consistency=true")
    trainer = recipes.trainer_of(config)
    assert recipes.network_contract(config).takes == "kspace" and trainer.batch_kind(config) == "kspace"
    assert recipes.network_contract(complex_config()).takes == "image" and trainer.batch_kind(complex_config()) \
        == "images"
    assert recipes.load_recipe("ppgr-complex")["model"]["data_consistency"] is False  # an option, off by default
    with pytest.raises(recipes.DaganError, match="model.data_consistency needs model.channels 2"):
        recipes.validate_config(tiny_config("ppgr", "model.data_consistency=true"))


def test_complex_dagan_with_data_consistency_trains_evaluates_and_serves(tmp_path, real_slices):
    from dagan_tf.training.run import train

    run_dir = tmp_path / "run"
    train(run_dir, complex_config("model.data_consistency=true", "train.epochs=1"), real_slices, verbose=0)
    assert "val_psnr" in (run_dir / "history.csv").read_text().splitlines()[0]
    scores = {}
    for flag in ((), ("--dc",)):
        out = tmp_path / f"e{len(flag)}"
        result = run("eval", "--run", run_dir, "--no-baselines", "--data", real_slices, *flag, "--out", out)
        assert result.exit_code == 0, result.output
        metrics = json.loads((out / "metrics.json").read_text())
        scores[flag] = metrics["model+dc" if flag else "model"]["psnr"]["mean"]
    assert abs(scores[()] - scores[("--dc",)]) < 1e-3  # its output already holds the measurements
    assert run("export", run_dir, "--out", tmp_path / "x", "--precision", "float32").exit_code == 0
    served = tf.saved_model.load(str(tmp_path / "x")).signatures["from_kspace"]
    network, _ = load_run_network(run_dir)
    mask = np.broadcast_to(make_mask("vds1d", (SIZE, SIZE), 0.25, seed=0), (2, SIZE, SIZE)).astype(np.float32)
    k0 = ks.fft2c(tf.complex(*tf.unstack(tf.random.uniform((2, 2, SIZE, SIZE), 0, 0.5, seed=5)))) * mask
    from dagan_tf.models.recnet import network_inputs

    expected = magnitude(network(network_inputs(k0, mask), training=False)).numpy()
    got = served(kspace_real=tf.math.real(k0), kspace_imag=tf.math.imag(k0), mask=tf.constant(mask))
    np.testing.assert_allclose(got["reconstruction"].numpy(), expected, atol=1e-5)
