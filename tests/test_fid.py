"""FID: the standard TF Inception pool3 network against the shared reference features, and the distance."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import SHARED, run
from dagan_tf.metrics import frechet_distance

FID_DIR = SHARED / "weights" / "fid_inception"
WEIGHTS = FID_DIR / "fid_inception_2015_12_05.npz"


def _shared():
    if not WEIGHTS.is_file():
        pytest.skip(f"FID weights not available: {WEIGHTS}")


def test_frechet_distance_against_an_eigenvalue_reference():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 6))
    b = rng.normal(0.3, 1.5, size=(150, 6)) @ rng.normal(size=(6, 6))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # Tr((Σa Σb)^½) = Σ √λ over the (real, non-negative) eigenvalues of Σa Σb
    trace_root = np.sum(np.sqrt(np.clip(np.linalg.eigvals(sa @ sb).real, 0, None)))
    expected = np.sum((a.mean(0) - b.mean(0)) ** 2) + np.trace(sa) + np.trace(sb) - 2 * trace_root
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)


def test_network_geometry_and_features_match_the_reference():
    _shared()
    from dagan_tf.models.fid import FIDFeatures, conv_geometry

    for name, conv in json.loads((FID_DIR / "fid_inception_convs.json").read_text()).items():
        pad = conv["padding"] if isinstance(conv["padding"], list) else [conv["padding"]] * 2
        assert conv_geometry(name.removeprefix("net.layers."), tuple(conv["weight"][2:])) == \
            (conv["stride"], tuple(pad)), name
    reference = np.load(FID_DIR / "fid_reference_features.npz")
    assert list(reference["model_input_range"]) == [-1.0, 0.9921875]
    features = FIDFeatures(WEIGHTS)(reference["inputs_nhwc_01"])
    np.testing.assert_allclose(features, reference["features"], atol=1e-4, rtol=1e-4)


def test_eval_reports_fid_for_every_row(tmp_path, real_slices):
    _shared()
    out = tmp_path / "eval"
    result = run("eval", "--model", "zero-filled", "--data", real_slices, "--mask", "gaussian1d", "--ratio",
                 "0.3", "--split", "val", "--fid", WEIGHTS, "--out", out)
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["zero_filled"]["fid"] > 0 and "FID" in result.output
    missing = run("eval", "--model", "zero-filled", "--data", real_slices, "--mask", "gaussian1d", "--ratio",
                  "0.3", "--fid", tmp_path / "none.npz", "--out", tmp_path / "e2")
    assert missing.exit_code != 0 and "--fid weights not found" in missing.output


def test_cached_features_of_the_same_pixels_are_computed_once():
    import tensorflow as tf

    from dagan_tf.models.fid import FIDFeatures

    calls = []
    features = object.__new__(FIDFeatures)  # no Inception weights needed: a stand-in network
    features.batch_size, features._cache = 4, {}
    features._run = lambda x: calls.append(len(x)) or tf.reduce_mean(x, axis=[1, 2])
    images = np.random.default_rng(0).random((6, 8, 8, 1)).astype(np.float32)
    first = features(images, cache=True)
    np.testing.assert_array_equal(features(images.copy(), cache=True), first)
    assert calls == [4, 2]  # the second call hit the cache
    features(images)
    assert calls == [4, 2, 4, 2]  # without cache: computed again
    assert not np.array_equal(features(images[::-1].copy(), cache=True), first)
