"""The SRGAN-style hybrid-loss GAN: ResNet generator, SRGAN discriminator, patch training, loss weights."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from conftest import SIZE, assert_resume_is_exact, run
from dagan_tf import kspace as ks
from dagan_tf import recipes
from dagan_tf.data.pipeline import training_dataset
from dagan_tf.data.prepare import load_split
from dagan_tf.masks import MaskSpec
from dagan_tf.models.srgan import build_resnet_generator, build_srgan_discriminator
from dagan_tf.training.cgan import build_trainer

PATCH = 16


def srgan_config(recipe="srgan-hybrid", *extra):
    return recipes.apply_overrides(recipes.load_recipe(recipe), [
        f"model.image_size={SIZE}", "model.width=0.125", "model.blocks=2", f"data.patch_size={PATCH}",
        "data.mask=gaussian2d", "data.ratio=0.3", "vgg.weights=random", "vgg.network=vgg16", "vgg.layer=block2_conv2",
        "train.batch_size=4", "train.val_batch_size=8", "train.steps_per_epoch=3", "train.epochs=2",
        "train.deterministic=true", "train.precision=float32", *extra])


def test_patches_are_cut_after_undersampling_the_whole_slice(real_slices):
    split = load_split(real_slices, "train")
    spec = MaskSpec("gaussian2d", 0.3)
    full, _ = training_dataset(split, 4, spec, seed=3, augment=None)
    patches, _ = training_dataset(split, 4, spec, seed=3, augment=None, patch_size=PATCH)
    (zf, target), (zf_crop, target_crop) = next(iter(full)), next(iter(patches))
    assert zf_crop.shape == (4, PATCH, PATCH, 1)
    mask = spec.build((SIZE, SIZE))
    offsets = set()
    for b in range(4):
        # locate the crop in the whole target, then the zero-filled crop must be the same window
        hits = [(i, j) for i in range(SIZE - PATCH + 1) for j in range(SIZE - PATCH + 1)
                if np.array_equal(target[b, i:i + PATCH, j:j + PATCH], target_crop[b])]
        assert hits, "the target patch is a window of the whole target"
        i, j = hits[0]
        offsets.add((i, j))
        np.testing.assert_allclose(zf_crop[b], zf[b, i:i + PATCH, j:j + PATCH], atol=1e-6)
        expected = np.abs(np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(
            np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(target[b, ..., 0]))) * mask))))
        np.testing.assert_allclose(zf_crop[b, ..., 0], expected[i:i + PATCH, j:j + PATCH], atol=1e-5)
        undersampled_crop = np.abs(ks.undersample(target_crop[b, ..., 0], spec.build((PATCH, PATCH)))[1])
        assert not np.allclose(zf_crop[b, ..., 0], undersampled_crop, atol=1e-3)  # not undersampling a crop
    assert len(offsets) > 1  # per-image locations
    again, _ = training_dataset(split, 4, spec, seed=3, augment=None, patch_size=PATCH)
    np.testing.assert_array_equal(next(iter(again))[0], zf_crop)  # a pure function of (seed, step)


def test_generator_is_fully_convolutional_and_matches_the_thesis_layout():
    any_size = build_resnet_generator(None, width=0.125, blocks=3)
    fixed = build_resnet_generator(48, width=0.125, blocks=3)
    fixed.set_weights(any_size.get_weights())
    x = tf.random.uniform((2, 48, 48, 1), seed=0)
    np.testing.assert_allclose(any_size(x).numpy(), fixed(x).numpy(), atol=1e-6)
    assert any_size(tf.zeros((1, 96, 96, 1))).shape == (1, 96, 96, 1)
    assert any_size.get_layer("first").kernel_size == (9, 9) and any_size.get_layer("out").kernel_size == (9, 9)
    assert sum("_add" in layer.name for layer in any_size.layers) == 3  # one identity skip per block
    d = build_srgan_discriminator(width=0.125)
    assert d(tf.zeros((2, 96, 96, 1))).shape == (2, 1) and d(tf.zeros((1, 256, 256, 1))).shape == (1, 1)
    strides = [layer.strides[0] for layer in d.layers if isinstance(layer, tf.keras.layers.Conv2D)]
    assert strides == [1, 2, 1, 2, 1, 2, 1, 2]


def test_zero_initialised_output_makes_the_untrained_refiner_return_its_input():
    x = tf.random.uniform((2, 32, 32, 1), seed=1)
    start = build_resnet_generator(None, width=0.125, blocks=2, refine=True, zero_init_output=True)
    np.testing.assert_allclose(start(x).numpy(), x.numpy(), atol=1e-6)
    default = build_resnet_generator(None, width=0.125, blocks=2, refine=True)
    assert float(tf.reduce_mean(tf.abs(default(x) - x))) > 1e-3  # the default output conv adds noise
    # through the recipe key, and the output convolution still learns (its gradient is not zero)
    model = build_trainer(srgan_config("srgan-mse", "model.refine=true", "model.zero_init_output=true"))
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.square(model.network(x[:, :PATCH, :PATCH]) - 0.5))
    grad = tape.gradient(loss, model.network.get_layer("out").kernel)
    assert not np.any(model.network.get_layer("out").kernel.numpy()) and float(tf.reduce_max(tf.abs(grad))) > 0


def test_loss_weights_reach_their_terms():
    config = srgan_config()
    model = build_trainer(config)
    x = tf.random.uniform((2, PATCH, PATCH, 1), seed=1)
    zf = x * 0.8
    variables = model.network.trainable_variables
    with tf.GradientTape(persistent=True) as tape:
        terms = model.generator_losses(zf, x)
    w = model.loss_weights_
    np.testing.assert_allclose(terms["g_loss"].numpy(), w.pixel * terms["g_pixel"] + w.vgg * terms["g_vgg"]
                               + w.adversarial * terms["g_adversarial"], rtol=1e-6)
    assert (w.pixel, w.vgg, w.adversarial, w.frequency) == (0.5, 0.5, 0.001, 0.0)
    total = tape.gradient(terms["g_loss"], variables)
    parts = [tape.gradient(terms[k], variables) for k in ("g_pixel", "g_vgg", "g_adversarial")]
    for g, *p in zip(total, *parts):  # each weight scales only its own term's gradient
        np.testing.assert_allclose(g.numpy(), w.pixel * p[0] + w.vgg * p[1] + w.adversarial * p[2], atol=1e-6)
    mse_only = build_trainer(srgan_config("srgan-mse")).loss_weights_
    assert (mse_only.pixel, mse_only.vgg) == (1.0, 0.0)
    vgg_config = srgan_config()
    assert vgg_config["vgg"]["feature_scale"] == pytest.approx(1 / 12.75)


def test_srgan_resume_export_and_predict(tmp_path, real_slices):
    whole, a = assert_resume_is_exact(srgan_config(), real_slices, tmp_path)
    assert a.input_shape == (None, SIZE, SIZE, 1)  # inference on whole slices

    export = tmp_path / "export"
    assert run("export", whole, "--out", export, "--precision", "float32").exit_code == 0
    served = tf.saved_model.load(str(export)).signatures["serving_default"]
    x = tf.random.uniform((2, SIZE, SIZE, 1), seed=2)
    np.testing.assert_allclose(served(zero_filled=x)["reconstruction"].numpy(), a(x, training=False).numpy(),
                               atol=1e-5)
    import nibabel as nib

    from conftest import phantom_volume, write_nifti

    source = write_nifti(tmp_path / "in.nii.gz", phantom_volume(SIZE, 4))
    volumes = []
    for model in (export, whole):
        out = tmp_path / f"{model.name}.nii.gz"
        result = run("predict", "--model", model, "--input", source, "--out", out, "--mask", "poisson2d",
                     "--ratio", "0.25")
        assert result.exit_code == 0, result.output
        volumes.append(nib.load(str(out)).get_fdata())
    np.testing.assert_allclose(volumes[0], volumes[1], atol=1e-3 * np.abs(volumes[1]).max())


def test_patch_size_needs_a_size_free_discriminator():
    with pytest.raises(Exception, match="patch_size"):
        recipes.apply_overrides(recipes.load_recipe("ppgr"), ["data.patch_size=96"])
