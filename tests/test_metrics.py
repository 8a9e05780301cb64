import numpy as np
import pytest
from skimage.metrics import mean_squared_error, peak_signal_noise_ratio, structural_similarity

from dagan_tf import metrics


@pytest.fixture
def pair():
    rng = np.random.default_rng(0)
    x = rng.random((3, 48, 40))
    y = np.clip(x + 0.05 * rng.standard_normal(x.shape), 0, 1)
    return x, y


def test_ssim_psnr_match_skimage(pair):
    x, y = pair
    for i in range(3):
        ref = structural_similarity(x[i], y[i], data_range=1.0, gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False)
        assert abs(metrics.ssim(x, y, 1.0).numpy()[i] - ref) < 1e-4
        assert abs(metrics.psnr(x, y, 1.0).numpy()[i] - peak_signal_noise_ratio(x[i], y[i], data_range=1.0)) < 1e-4


def test_dagan_compat_ssim_and_nmse(pair):
    x, y = pair
    for i in range(3):
        ref = structural_similarity(x[i], y[i], data_range=2.0)  # skimage 0.12 semantics
        assert abs(metrics.ssim(x, y, dagan_compat=True).numpy()[i] - ref) < 1e-4
    squared = np.sum((y - x) ** 2, axis=(1, 2)) / np.sum(x ** 2, axis=(1, 2))
    np.testing.assert_allclose(metrics.nmse(x, y).numpy(), squared, rtol=1e-5)
    np.testing.assert_allclose(metrics.nmse(x, y, dagan_compat=True).numpy(), np.sqrt(squared), rtol=1e-5)


def test_default_data_range_is_target_maximum(pair):
    x, y = pair
    x, y = 3 * x, 3 * y
    expected = 10 * np.log10(x.max() ** 2 / mean_squared_error(x[0], y[0]))
    assert abs(metrics.psnr(x, y).numpy()[0] - expected) < 1e-3


def test_volume_ranges_and_aggregation():
    target = np.stack([np.full((4, 4), v) for v in (1.0, 2.0, 5.0, 3.0)])
    subjects = np.array(["a", "a", "b", "b"])
    np.testing.assert_array_equal(metrics.volume_data_ranges(target, subjects), [2, 2, 5, 5])
    summary = metrics.summary_json({"psnr": np.array([1.0, 3.0, 5.0, 7.0])}, subjects)
    assert summary["psnr"]["mean"] == 4.0 and summary["psnr"]["std"] == pytest.approx(np.std([1, 3, 5, 7]))
    assert summary["psnr"]["per_volume"]["mean"] == 4.0 and summary["psnr"]["per_volume"]["std"] == 2.0
