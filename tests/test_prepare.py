import json

import numpy as np
import pytest

from conftest import phantom_volume, shared_path, write_nifti
from dagan_tf.data.prepare import PrepareConfig, assign_splits, load_split, prepare
from dagan_tf.errors import DaganError


def test_prepare_splits_by_subject_with_manifest(prepared_dir):
    manifest = json.loads((prepared_dir / "manifest.json").read_text())
    subjects = manifest["subjects"]
    assert sorted(sum(subjects.values(), [])) == [f"sub{i}" for i in range(5)]
    assert len(subjects["train"]) == 3 and len(subjects["val"]) == 1 and len(subjects["test"]) == 1
    for split in ("train", "val", "test"):
        s = load_split(prepared_dir, split)
        assert set(s.subjects) == set(subjects[split])
        assert s.images.shape[1:] == (32, 32) and s.images.dtype == np.float32
        assert 0.0 <= s.images.min() and s.images.max() <= 1.0
        assert manifest["counts"][split]["slices"] == len(s.images)


def test_split_is_deterministic_and_seeded():
    subjects = [f"s{i}" for i in range(20)]
    a = assign_splits(subjects, (0.7, 0.1, 0.2), 0)
    assert a == assign_splits(list(reversed(subjects)), (0.7, 0.1, 0.2), 0)
    assert a != assign_splits(subjects, (0.7, 0.1, 0.2), 1)
    assert [len(a[k]) for k in ("train", "val", "test")] == [14, 2, 4]
    with pytest.raises(DaganError, match="cannot fill"):
        assign_splits(["a", "b"], (0.7, 0.1, 0.2), 0)


def test_non_square_inputs_and_fit_modes(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        write_nifti(src / f"v{i}.nii.gz", phantom_volume(40, 10, seed=i)[:, 5:35])  # 40 x 30
    for fit in ("resize", "pad-crop"):
        out = tmp_path / fit
        prepare([str(src)], out, PrepareConfig(size=24, split=(0.34, 0.33, 0.33), fit=fit, min_foreground=0.0))
        assert load_split(out, "train").images.shape[1:] == (24, 24)


def test_minmax_handles_zscored_background(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        write_nifti(src / f"z{i}.nii.gz", phantom_volume(16, 6, seed=i) / 100.0 - 2.0)  # background -2
    out = tmp_path / "out"
    prepare([str(src)], out, PrepareConfig(size=16, split=(0.34, 0.33, 0.33), min_foreground=0.1))
    images = load_split(out, "train").images
    assert images.min() == 0.0 and np.mean(images == 0.0) > 0.2
    with pytest.raises(DaganError, match="negative"):
        prepare([str(src)], tmp_path / "o2", PrepareConfig(size=16, split=(0.34, 0.33, 0.33), normalise="max"))


def test_all_zero_volume_is_skipped_then_error(tmp_path, caplog):
    src = tmp_path / "src"
    src.mkdir()
    write_nifti(src / "zero.nii.gz", np.zeros((8, 8, 4), np.float32))
    for i in range(3):
        write_nifti(src / f"v{i}.nii.gz", phantom_volume(16, 6, seed=i))
    prepare([str(src)], tmp_path / "ok", PrepareConfig(size=16, split=(0.34, 0.33, 0.33)))
    assert "zero.nii.gz" in caplog.text
    with pytest.raises(DaganError, match="no usable slices"):
        prepare([str(src / "zero.nii.gz")], tmp_path / "bad", PrepareConfig(size=16))
    assert not (tmp_path / "bad").exists()


def test_real_shared_volumes_prepare(tmp_path):
    ixi = shared_path("mri", "ixi-t1")
    brats = shared_path("mri", "brats2013")
    out = tmp_path / "real"
    sources = [str(p) for p in sorted(ixi.glob("*.nii.gz"))[:3]] + \
              [str(p) for p in sorted(brats.glob("*pat000[12]*T1c*"))]
    manifest = prepare(sources, out, PrepareConfig(size=64, split=(0.6, 0.2, 0.2), subject_regex=r"(IXI\d+|pat\d+)"))
    assert sum(c["subjects"] for c in manifest["counts"].values()) == 5
    train = load_split(out, "train")
    assert train.images.shape[1:] == (64, 64) and train.images.max() > 0.5
