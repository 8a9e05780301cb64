import numpy as np
import pytest
import scipy.io

from conftest import shared_path
from dagan_tf import masks
from dagan_tf.errors import DaganError


@pytest.mark.parametrize("kind", masks.MASK_KINDS)
@pytest.mark.parametrize("ratio", [0.1, 0.3, 0.5])
def test_ratio_is_met_and_mask_is_centred(kind, ratio):
    m = masks.make_mask(kind, (64, 64), ratio, seed=3)
    assert m.dtype == np.float32 and set(np.unique(m)) <= {0.0, 1.0}
    tolerance = 1 / 64 if kind in ("gaussian1d", "vds1d", "equispaced", "random1d") else 0.01
    assert abs(masks.sampled_fraction(m) - ratio) <= tolerance
    assert m[32, 32] == 1.0  # DC sampled, centred layout


@pytest.mark.parametrize("kind", ["gaussian1d", "vds1d", "equispaced", "random1d"])
def test_1d_kinds_sample_whole_columns(kind):
    m = masks.make_mask(kind, (48, 64), 0.25, seed=1)
    assert np.all(m == m[0:1])


def test_seeded_and_variable_density():
    a = masks.make_mask("gaussian2d", (64, 64), 0.2, seed=7)
    assert np.array_equal(a, masks.make_mask("gaussian2d", (64, 64), 0.2, seed=7))
    assert not np.array_equal(a, masks.make_mask("gaussian2d", (64, 64), 0.2, seed=8))
    m = masks.make_mask("poisson2d", (128, 128), 0.2, seed=0)
    centre, edge = m[48:80, 48:80].mean(), np.concatenate([m[:16].ravel(), m[-16:].ravel()]).mean()
    assert centre > 2 * edge


def test_vds1d_paper_setting_and_acs():
    m = masks.make_mask("vds1d", (256, 256), 0.25, seed=0, acs=12)
    assert m[0].sum() == 64
    assert np.all(m[0, 122:134] == 1)


def test_poisson_min_distance():
    m = masks.make_mask("poisson2d", (256, 256), 0.1, seed=0)
    assert abs(masks.sampled_fraction(m) - 0.1) < 0.01
    # outside the fully sampled centre, no two samples touch horizontally near the edge
    edge = m[:40]
    assert np.sum(edge[:, 1:] * edge[:, :-1]) == 0


def test_bad_requests():
    with pytest.raises(DaganError, match="ratio"):
        masks.make_mask("gaussian1d", (32, 32), 0.0)
    with pytest.raises(DaganError, match="ratio"):
        masks.make_mask("gaussian1d", (32, 32), 1.5)
    with pytest.raises(DaganError, match="unknown mask kind"):
        masks.make_mask("spiral", (32, 32), 0.2)


def test_load_dagan_masks_from_shared_data():
    folder = shared_path("masks", "dagan")
    m = masks.load_dagan_mask(folder / "Gaussian1D" / "GaussianDistribution1DMask_10.mat")
    assert m.shape == (256, 256) and abs(masks.sampled_fraction(m) - 0.0938) < 1e-3
    assert np.all(m == m[0:1]) and m[128, 128] == 1
    p = masks.load_dagan_mask(folder / "Poisson2D" / "PoissonDistributionMask_30.mat")
    assert abs(masks.sampled_fraction(p) - 0.355) < 1e-3


def test_load_dagan_mask_keys(tmp_path):
    scipy.io.savemat(tmp_path / "m.mat", {"population_matrix": np.eye(4, dtype=np.uint8)})
    assert masks.load_dagan_mask(tmp_path / "m.mat").sum() == 4
    scipy.io.savemat(tmp_path / "bad.mat", {"other": np.eye(4)})
    with pytest.raises(DaganError, match="none of the DAGAN mask keys"):
        masks.load_dagan_mask(tmp_path / "bad.mat")
