"""Labels in prepared splits, the SIS segmenter and the semantic interpretability score."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import SIZE, assert_user_error, phantom_volume, run, write_nifti
from dagan_tf.data.prepare import PrepareConfig, load_split, merge_labels, prepare
from dagan_tf.evaluate import SISScorer
from dagan_tf.metrics import dice_per_class


def _labelled(tmp_path, n=4, depth=12):
    """NIfTI phantoms with label maps (0 outside, 1 head, 2 inner ellipse) named sub*_seg.nii.gz."""
    folder = tmp_path / "vols"
    folder.mkdir()
    for i in range(n):
        vol = phantom_volume(SIZE, depth, seed=i)
        write_nifti(folder / f"sub{i}.nii.gz", vol)
        write_nifti(folder / f"sub{i}_seg.nii.gz", ((vol > 100).astype(np.float32) + (vol > 800)))
    return folder


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("labelled")
    folder = _labelled(tmp)
    out = tmp / "prepared"
    prepare([str(p) for p in sorted(folder.glob("sub?.nii.gz"))], out,
            PrepareConfig(size=SIZE, split=(0.5, 0.25, 0.25), min_foreground=0.05,
                          labels=(str(folder / "*_seg.nii.gz"),)))
    return out


def test_labels_stay_aligned_with_their_image_slices(labelled):
    split = load_split(labelled, "train")
    assert split.labels.dtype == np.uint8 and split.labels.shape == split.images.shape
    # the label map was made from the same volume: class 2 exactly where the image is bright
    bright = split.images > 0.75 * split.images.max()
    assert np.mean(split.labels[bright] == 2) > 0.9 and np.mean(split.labels[split.images == 0] == 0) > 0.95
    assert json.loads((labelled / "manifest.json").read_text())["labels"]["classes"] == 3


def test_npz_with_vol_and_seg_and_freesurfer_merge(tmp_path):
    vol = phantom_volume(SIZE, 10)
    seg = np.where(vol > 800, 17, np.where(vol > 100, 2, 0)).astype(np.float64)  # hippocampus / white matter
    np.savez(tmp_path / "scan.npz", vol=vol, seg=seg)
    out = tmp_path / "p"
    prepare([str(tmp_path / "scan.npz")], out, PrepareConfig(size=SIZE, slabs=2, split=(0.5, 0.5, 0.0),
                                                             min_foreground=0.05,
                                                             labels=(str(tmp_path / "scan.npz"),),
                                                             label_merge="freesurfer"))
    labels = np.asarray(load_split(out, "train").labels)
    assert set(np.unique(labels)) <= {0, 3, 4} and (labels == 4).any()  # 17 -> deep grey, 2 -> white matter
    np.testing.assert_array_equal(merge_labels(np.array([0, 4, 3, 2, 10, 999 % 256]), "freesurfer"),
                                  [0, 1, 2, 3, 4, 0])


def test_label_shape_mismatch_is_a_one_line_error(tmp_path):
    folder = tmp_path / "v"
    folder.mkdir()
    write_nifti(folder / "a.nii.gz", phantom_volume(SIZE, 8))
    write_nifti(folder / "a_seg.nii.gz", np.zeros((SIZE, SIZE, 9), np.float32))
    out = tmp_path / "p"
    assert_user_error(run("prepare", folder / "a.nii.gz", "--labels", folder / "a_seg.nii.gz", "--out", out,
                          "--size", SIZE), "label volume", "(32, 32, 9)", "(32, 32, 8)", output=out)
    assert_user_error(run("prepare", folder / "a.nii.gz", "--labels", folder / "a.nii.gz", "--out", out,
                          "--size", SIZE), "labels must be integers", output=out)


def test_dice_and_sis_against_a_hand_computation():
    truth = np.array([[[1, 1], [0, 2]], [[0, 0], [0, 0]]])
    predicted = np.array([[[1, 0], [0, 2]], [[1, 0], [0, 0]]])
    d = dice_per_class(predicted, truth, [1, 2])
    np.testing.assert_allclose(d[0], [2 * 1 / (1 + 2), 1.0])
    assert np.isnan(d[1]).all()  # no class present in the second slice: not counted
    scorer = SISScorer(lambda x: x, [1, 2], "hand")
    result = {"model": {}}
    settings = scorer.scores({"ground_truth": np.array([[0.8, 0.5], [0.6, np.nan]]),
                              "model": np.array([[0.4, 0.5], [0.3, np.nan]])}, result)
    # class 1: mean 0.35 / 0.7 = 0.5; class 2: 0.5 / 0.5 = 1 -> SIS 0.75
    assert result["model"]["sis"] == pytest.approx(0.75)
    assert settings["ground_truth_dice"] == pytest.approx((0.7 + 0.5) / 2)


def test_segmenter_run_and_eval_with_sis(tmp_path, labelled, prepared_dir):
    seg = tmp_path / "seg"
    result = run("train", "--recipe", "segmenter", "--data", labelled, "--out", seg, "--set", f"model.image_size={SIZE}",
                 "--set", "model.width=0.25", "--set", "train.epochs=2", "--set", "train.steps_per_epoch=4",
                 "--set", "train.batch_size=4", "--set", "train.precision=float32")
    assert result.exit_code == 0, result.output
    assert "model.classes 5 -> 3" in result.output
    out = tmp_path / "eval"
    result = run("eval", "--model", "zero-filled", "--data", labelled, "--mask", "gaussian1d", "--ratio", "0.3",
                 "--sis", seg, "--out", out)
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 < metrics["zero_filled"]["sis"] and metrics["sis"]["classes"] == [1, 2]
    assert "SIS" in (out / "report.md").read_text()
    # errors: data without labels, a segmenter that is not one, a class it does not have
    bad = tmp_path / "bad"
    assert_user_error(run("eval", "--model", "zero-filled", "--data", prepared_dir, "--mask", "gaussian1d",
                          "--ratio", "0.3", "--sis", seg, "--out", bad), "--sis needs label maps", output=bad)
    assert_user_error(run("eval", "--model", "zero-filled", "--data", labelled, "--mask", "gaussian1d",
                          "--ratio", "0.3", "--sis", seg, "--sis-class", "7", "--out", bad),
                      "--sis-class 7", output=bad)
    assert_user_error(run("train", "--recipe", "segmenter", "--data", prepared_dir, "--out", bad),
                      "no label maps", output=bad)
