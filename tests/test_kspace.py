import numpy as np
import tensorflow as tf

from dagan_tf import kspace as ks


def _numpy_fft2c(x):
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))


def test_fft2c_matches_numpy_with_batch_dims():
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(2, 3, 16, 12)) + 1j * rng.normal(size=(2, 3, 16, 12))).astype(np.complex64)
    np.testing.assert_allclose(ks.fft2c(x).numpy(), _numpy_fft2c(x), atol=1e-5)
    inv = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(x, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
    np.testing.assert_allclose(ks.ifft2c(x).numpy(), inv, atol=1e-5)


def test_parseval_and_round_trip():
    x = np.random.default_rng(1).random((4, 32, 32)).astype(np.float32)
    k = ks.fft2c(x)
    np.testing.assert_allclose(np.sum(np.abs(k.numpy()) ** 2, axis=(1, 2)), np.sum(x ** 2, axis=(1, 2)), rtol=1e-5)
    np.testing.assert_allclose(ks.ifft2c(k).numpy().real, x, atol=1e-5)


def test_dc_sits_at_centre_so_masks_are_centred():
    x = np.ones((8, 10), np.float32)
    k = np.abs(ks.fft2c(x).numpy())
    assert np.unravel_index(np.argmax(k), k.shape) == (4, 5)
    # a centred mask keeping only DC turns an image into its mean
    mask = np.zeros((8, 10), np.float32)
    mask[4, 5] = 1
    img = np.random.default_rng(2).random((8, 10)).astype(np.float32)
    _, zf = ks.undersample(img, mask)
    np.testing.assert_allclose(zf.numpy().real, np.full_like(img, img.mean()), atol=1e-6)


def test_zero_filled_equals_original_dagan_formula():
    img = np.random.default_rng(3).random((16, 16)).astype(np.float32)
    mask = (np.random.default_rng(4).random((16, 16)) < 0.3).astype(np.float32)
    dagan = np.abs(np.fft.ifft2(np.fft.ifftshift(np.fft.fftshift(np.fft.fft2(img)) * mask)))
    ours = np.abs(ks.undersample(img, mask)[1].numpy())
    np.testing.assert_allclose(ours, dagan, atol=1e-5)


def test_data_consistency_hard_and_noisy():
    rng = np.random.default_rng(5)
    k = (rng.normal(size=(2, 8, 8)) + 1j * rng.normal(size=(2, 8, 8))).astype(np.complex64)
    k0 = (rng.normal(size=(2, 8, 8)) + 1j * rng.normal(size=(2, 8, 8))).astype(np.complex64)
    m = (rng.random((8, 8)) < 0.4).astype(np.float32)
    hard = ks.data_consistency(k, k0, m).numpy()
    np.testing.assert_allclose(hard, (1 - m) * k + m * k0, atol=1e-6)
    # idempotent
    np.testing.assert_allclose(ks.data_consistency(hard, k0, m).numpy(), hard, atol=1e-6)
    v = 2.0
    noisy = ks.data_consistency(k, k0, m, v).numpy()
    np.testing.assert_allclose(noisy, (1 - m) * k + m * (k + v * k0) / (1 + v), atol=1e-5)
    np.testing.assert_allclose(ks.data_consistency(k, k0, m, 1e8).numpy(), hard, atol=1e-4)


def test_data_consistency_layer_trainable_weight_gets_gradient():
    layer = ks.DataConsistency(noise_weight=1.0, trainable_weight=True)
    img = tf.random.uniform((2, 8, 8, 1), seed=1)
    target = tf.random.uniform((2, 8, 8), seed=2)
    m = tf.cast(tf.random.uniform((8, 8), seed=3) < 0.5, tf.float32)
    k0, _ = ks.undersample(target, m)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer([img, k0, m]))
    assert len(layer.trainable_weights) == 1
    assert tape.gradient(loss, layer.trainable_weights[0]) is not None
    # hard DC of the ground truth returns the ground truth
    hard = ks.DataConsistency()
    k_full = ks.fft2c(target)
    np.testing.assert_allclose(hard([target[..., None], k_full, tf.ones((8, 8))]).numpy()[..., 0],
                               target.numpy(), atol=1e-5)


def test_multicoil_adjoint_is_adjoint():
    rng = np.random.default_rng(6)
    x = (rng.normal(size=(12, 12)) + 1j * rng.normal(size=(12, 12))).astype(np.complex64)
    s = (rng.normal(size=(4, 12, 12)) + 1j * rng.normal(size=(4, 12, 12))).astype(np.complex64)
    y = (rng.normal(size=(4, 12, 12)) + 1j * rng.normal(size=(4, 12, 12))).astype(np.complex64)
    lhs = np.vdot(ks.sense_forward(x, s).numpy(), y)
    rhs = np.vdot(x, ks.sense_adjoint(y, s).numpy())
    np.testing.assert_allclose(lhs, rhs, rtol=1e-4)
    expected = np.sum(np.conj(s) * np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(y, axes=(-2, -1)), norm="ortho"),
                                                    axes=(-2, -1)), axis=0)
    np.testing.assert_allclose(ks.sense_adjoint(y, s).numpy(), expected, atol=1e-4)
