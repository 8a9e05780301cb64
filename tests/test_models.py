import logging

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import SHARED
from dagan_tf.errors import DaganError
from dagan_tf.models.dagan import build_discriminator, build_generator, unet_depth
from dagan_tf.models.vgg import VGGFeatures, build_vgg_features

VGG16_FILE = SHARED / "weights" / "vgg16_imagenet_notop.weights.h5"


def _trainable(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def test_full_size_parameter_counts_match_the_original():
    g, d = build_generator(256), build_discriminator(256)
    assert abs(_trainable(g) / 1e6 - 98.59) < 0.01
    assert abs(_trainable(d) / 1e6 - 48.14) < 0.01
    bn = [l for l in g.layers if isinstance(l, keras.layers.BatchNormalization)]
    assert all(l.momentum == 0.9 and l.epsilon == 1e-5 for l in bn)
    assert sum(int(np.prod(w.shape)) for l in bn for w in l.non_trainable_weights) == 13056
    assert g.get_layer("conv8").output.shape[1] == 1


@pytest.mark.parametrize("size,depth", [(128, 7), (320, 6), (64, 6), (256, 8)])
def test_depth_follows_input_size(size, depth):
    assert unet_depth(size) == depth
    g = build_generator(size, width=1 / 16)
    x = tf.random.uniform((2, size, size, 1))
    assert g(x).shape == (2, size, size, 1)
    assert build_discriminator(size, width=1 / 16)(x, training=True).shape == (2, 1)


def test_refinement_is_ramp_of_residual():
    g = build_generator(32, width=1 / 16, refine=True)
    out = g.get_layer("out")
    out.set_weights([np.zeros_like(w) for w in out.get_weights()])
    x = tf.random.uniform((2, 32, 32, 1)) * 1.2  # zero-filled can exceed 1
    np.testing.assert_allclose(g(x).numpy(), np.clip(x.numpy(), 0, 1), atol=1e-6)
    plain = build_generator(32, width=1 / 16, refine=False)
    plain.get_layer("out").set_weights([np.zeros_like(w) for w in plain.get_layer("out").get_weights()])
    np.testing.assert_allclose(plain(x).numpy(), 0.5, atol=1e-6)


def test_generator_serialises(tmp_path):
    g = build_generator(32, width=1 / 16)
    g.save(tmp_path / "g.keras")
    loaded = keras.models.load_model(tmp_path / "g.keras")
    x = tf.random.uniform((1, 32, 32, 1))
    np.testing.assert_allclose(loaded(x).numpy(), g(x).numpy(), atol=1e-6)


def test_vgg16_same_pooling_gives_dagan_feature_shape():
    if not VGG16_FILE.exists():
        pytest.skip(f"shared VGG16 weights not available: {VGG16_FILE}")
    features = VGGFeatures(weights=str(VGG16_FILE))
    f = features(tf.random.uniform((2, 64, 64, 1)))
    assert f.shape == (2, 16, 16, 512)
    reference = keras.applications.VGG16(weights=str(VGG16_FILE), include_top=False)
    np.testing.assert_array_equal(features.model.get_layer("block1_conv1").get_weights()[0],
                                  reference.get_layer("block1_conv1").get_weights()[0])
    valid = build_vgg_features(weights=str(VGG16_FILE), same_pooling=False)
    assert valid(tf.zeros((1, 244, 244, 3))).shape == (1, 15, 15, 512)
    assert not features.model.trainable_weights


def test_vgg_weight_options(caplog, tmp_path):
    with pytest.raises(DaganError, match="vgg.weights"):
        VGGFeatures(weights=str(tmp_path / "missing.h5"))
    with caplog.at_level(logging.WARNING):
        VGGFeatures(arch="vgg19", layer="block5_conv4", weights="random")
    assert "RANDOM" in caplog.text
    with pytest.raises(DaganError, match="no layer"):
        VGGFeatures(layer="conv99", weights="random")
