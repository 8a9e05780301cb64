import pytest

from dagan_tf.data.demo import demo_volume_path
from dagan_tf.data.prepare import PrepareConfig, load_split, prepare
from dagan_tf.data.readers import read_volume


def test_demo_volume_is_real_mri_from_the_installed_extra(tmp_path):
    pytest.importorskip("nilearn", reason="the 'demo' extra (nilearn) is not installed")
    volume = read_volume(demo_volume_path())
    assert volume.data.shape == (197, 233, 189)
    manifest = prepare([str(demo_volume_path())], tmp_path / "demo", PrepareConfig(size=64, slabs=5,
                                                                                   split=(0.6, 0.2, 0.2)))
    assert sorted(sum(manifest["subjects"].values(), [])) == [f"{volume.subject}-slab{k}" for k in range(5)]
    train, test = load_split(tmp_path / "demo", "train"), load_split(tmp_path / "demo", "test")
    assert not set(train.subjects) & set(test.subjects)
    assert len(train.images) > len(test.images) > 0
