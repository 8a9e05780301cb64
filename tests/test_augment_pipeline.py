import numpy as np
import tensorflow as tf
from scipy import ndimage

from dagan_tf import kspace as ks
from dagan_tf.data import augment
from dagan_tf.data.pipeline import evaluation_dataset, evaluation_masks, training_dataset
from dagan_tf.data.prepare import load_split
from dagan_tf.masks import MaskSpec


def test_elastic_matches_scipy_reference_away_from_border():
    h = w = 64
    alpha, sigma = 765.0 / 4, 25.5 / 4
    seed = tf.constant([3, 4], tf.int64)
    image = ndimage.gaussian_filter(np.random.default_rng(0).random((1, h, w, 1)), (0, 2, 2, 0)).astype(np.float32)
    disp = augment.elastic_displacements(seed, 1, h, w, alpha, sigma).numpy()
    noise = tf.random.stateless_uniform([1, 2, h, w], seed, -1.0, 1.0).numpy()[0]
    for c in range(2):
        ref = ndimage.gaussian_filter(noise[c].astype(np.float64), sigma, mode="constant") * alpha
        np.testing.assert_allclose(disp[0, ..., c], ref, atol=1e-4)
    out = augment.elastic_transform(tf.constant(image), tf.constant(disp)).numpy()[0, ..., 0]
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    cy, cx = yy + disp[0, ..., 0], xx + disp[0, ..., 1]
    ref = ndimage.map_coordinates(image[0, ..., 0].astype(np.float64), [cy, cx], order=1, mode="constant")
    inside = (cy > 1) & (cy < h - 2) & (cx > 1) & (cx < w - 2)
    assert inside.mean() > 0.5
    np.testing.assert_allclose(out[inside], ref[inside], atol=1e-4)


def test_fields_are_independent_per_image_unless_asked():
    seed = tf.constant([1, 2], tf.int64)
    d = augment.elastic_displacements(seed, 3, 32, 32, 10.0, 3.0).numpy()
    assert not np.allclose(d[0], d[1]) and not np.allclose(d[0, ..., 0], d[0, ..., 1])
    shared = augment.elastic_displacements(seed, 3, 32, 32, 10.0, 3.0, per_image=False).numpy()
    np.testing.assert_array_equal(shared[0], shared[2])


def test_augment_batch_is_seeded_and_in_range():
    x = tf.random.uniform((4, 32, 32, 1), seed=0)
    a = augment.augment_batch(x, tf.constant([5, 6], tf.int64)).numpy()
    b = augment.augment_batch(x, tf.constant([5, 6], tf.int64)).numpy()
    c = augment.augment_batch(x, tf.constant([5, 7], tf.int64)).numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert a.min() >= 0 and a.max() <= 1 and a.shape == (4, 32, 32, 1)
    identity = augment.AugmentConfig(flip=False, rotation_deg=0, shift=0, zoom=(1, 1), gamma=(1, 1),
                                     elastic_alpha=0)
    np.testing.assert_allclose(augment.augment_batch(x, tf.constant([1, 1], tf.int64), identity).numpy(),
                               x.numpy(), atol=1e-6)


def test_training_pipeline_is_a_function_of_seed_and_epoch(prepared_dir):
    split = load_split(prepared_dir, "train")
    spec = MaskSpec("gaussian1d", 0.3)
    ds, steps = training_dataset(split, 4, spec, seed=1)
    assert all(spec.shape == (4, 32, 32, 1) for spec in ds.element_spec)  # static: the models pick kernels by size
    batches = list(ds.take(steps + 1))
    resumed, _ = training_dataset(split, 4, spec, seed=1, start_step=steps)
    np.testing.assert_array_equal(next(iter(resumed))[1].numpy(), batches[steps][1].numpy())
    zf, target = batches[0]
    assert zf.shape == target.shape == (4, 32, 32, 1)
    expected = np.abs(ks.undersample(target[..., 0], spec.build((32, 32)))[1].numpy())
    np.testing.assert_allclose(zf.numpy()[..., 0], expected, atol=1e-5)


def test_evaluation_masks_fixed_per_slice(prepared_dir):
    split = load_split(prepared_dir, "test")
    spec = MaskSpec("gaussian2d", 0.25, seed=3, per_sample=True)
    first = [b.mask.numpy() for b in evaluation_dataset(split, 3, evaluation_masks(split, spec), with_kspace=True)]
    second = [b.mask.numpy() for b in evaluation_dataset(split, 3, evaluation_masks(split, spec), with_kspace=True)]
    masks = np.concatenate(first)
    assert len(masks) == len(split.images)
    np.testing.assert_array_equal(masks, np.concatenate(second))
    assert not np.array_equal(masks[0], masks[1])
