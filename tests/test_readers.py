import h5py
import numpy as np
import pytest
import scipy.io

from conftest import phantom_volume, shared_path, write_nifti
from dagan_tf.data import readers
from dagan_tf.errors import DaganError


def test_nifti_is_reoriented_to_canonical(tmp_path):
    data = phantom_volume(16, 8)
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])  # stored L->R flipped
    vol = readers.read_volume(write_nifti(tmp_path / "s.nii.gz", data, flip))
    np.testing.assert_allclose(vol.data, data[::-1])
    assert vol.subject == "s" and vol.affine[0, 0] > 0


def test_4d_nifti_needs_volume_index(tmp_path):
    path = write_nifti(tmp_path / "f.nii", np.stack([phantom_volume(8, 4), 2 * phantom_volume(8, 4)], -1))
    with pytest.raises(DaganError, match="4-D"):
        readers.read_volume(path)
    assert readers.read_volume(path, volume_index=1).data.max() == pytest.approx(2 * phantom_volume(8, 4).max())


def test_truncated_nifti_is_a_clear_error(tmp_path):
    good = write_nifti(tmp_path / "g.nii.gz", phantom_volume(16, 8))
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(good.read_bytes()[:200])
    with pytest.raises(DaganError, match="bad.nii.gz"):
        readers.read_volume(bad)


def _centred_fft(img):
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(img, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))


def test_fastmri_hdf5_single_and_multi_coil(tmp_path):
    img = np.transpose(phantom_volume(16, 3), (2, 0, 1))  # [S, H, W]
    with h5py.File(tmp_path / "single.h5", "w") as f:
        f["kspace"] = _centred_fft(img).astype(np.complex64)
    vol = readers.read_volume(tmp_path / "single.h5")
    np.testing.assert_allclose(vol.data, np.transpose(img, (1, 2, 0)), atol=1e-2)
    coils = np.stack([0.6 * img, 0.8 * img], axis=1)  # RSS = img
    with h5py.File(tmp_path / "multi.h5", "w") as f:
        f["kspace"] = _centred_fft(coils).astype(np.complex64)
    np.testing.assert_allclose(readers.read_volume(tmp_path / "multi.h5").data, np.transpose(img, (1, 2, 0)),
                               atol=1e-2)
    with h5py.File(tmp_path / "rss.h5", "w") as f:
        f["kspace"] = np.zeros((3, 16, 16), np.complex64)
        f["reconstruction_rss"] = img
    np.testing.assert_allclose(readers.read_volume(tmp_path / "rss.h5").data, np.transpose(img, (1, 2, 0)))


def test_numpy_and_mat_v5(tmp_path):
    data = phantom_volume(8, 4)
    np.save(tmp_path / "a.npy", data)
    np.savez(tmp_path / "b.npz", vol=data, seg=np.zeros(3))
    scipy.io.savemat(tmp_path / "c.mat", {"im": data})
    for name in ("a.npy", "b.npz", "c.mat"):
        np.testing.assert_array_equal(readers.read_volume(tmp_path / name).data, data)


def test_dicom_series_from_shared_data():
    vol = readers.read_volume(shared_path("mri", "nichart-mprage-dicom"))
    assert vol.data.shape[2] > 1 and vol.data.ndim == 3
    assert 176 in vol.data.shape  # 176 sagittal slices, reoriented so axial runs along the last axis
    assert vol.data.shape[0] == 176  # sagittal slice index becomes the x (left-right) axis in RAS
    assert vol.data.max() > 0


def test_mat_v73_png_and_npz_from_shared_data():
    cardiac = readers.read_volume(shared_path("mri", "admm-cardiac", "im-01.mat"))
    assert cardiac.data.shape == (256, 256, 1)
    png = readers.read_volume(shared_path("mri", "ista-net-brain", "brain_test_01.png"))
    assert png.data.shape == (256, 256, 1) and png.data.max() <= 255
    npz = readers.read_volume(shared_path("mri", "voxelmorph", "test_scan.npz"))
    assert npz.data.shape == (160, 192, 224)


def test_find_sources(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DaganError, match="no readable images"):
        readers.find_sources([tmp_path / "empty"])
    with pytest.raises(DaganError, match="not found"):
        readers.find_sources([tmp_path / "missing"])
