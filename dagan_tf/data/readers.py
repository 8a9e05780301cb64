"""Readers that turn files into magnitude volumes.

Every reader returns a :class:`Volume`: ``data`` float32 ``[X, Y, Z]`` with
axial slices along the last axis (NIfTI and DICOM are reoriented to RAS+
canonical first), the voxel-to-world ``affine`` (4×4) and a subject id.
2-D images become ``[X, Y, 1]`` volumes.

Supported: NIfTI (``.nii``, ``.nii.gz``), DICOM series folders (sorted by slice
position; needs the ``dicom`` extra), fastMRI-style HDF5 (``.h5``), ``.npy``,
``.npz``, MATLAB ``.mat`` (v5 via scipy, v7.3 via h5py) and PNG.
"""
from __future__ import annotations

import gzip
import os
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dagan_tf.errors import DaganError

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".h5", ".hdf5", ".npy", ".npz", ".mat", ".png")
MAX_VOXELS = 2 ** 31  # 8 GiB of float32: a larger header is corrupt or not a single volume
HDF5_IMAGE_KEYS = ("reconstruction_rss", "reconstruction_esc")
NPZ_KEYS = ("vol", "image", "img", "data", "arr_0")


@dataclass
class Volume:
    """A magnitude volume ``data[X, Y, Z]`` (axial along Z), its ``affine`` and ``subject`` id."""

    data: np.ndarray
    affine: np.ndarray = field(default_factory=lambda: np.eye(4))
    subject: str = ""
    source: str = ""


def subject_id(path: str | os.PathLike) -> str:
    """Subject id of a file or series folder: its name without the (double) suffix."""
    name = Path(path).name
    for suffix in (".nii.gz", ".tar.gz") + VOLUME_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def _to_3d(array: np.ndarray, path, volume_index: int | None) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype.names is not None:
        array = complex_from_fields(array, path)
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise DaganError(f"{path} holds {array.dtype} data, not an image")
    if np.iscomplexobj(array):
        array = np.abs(array)
    array = np.squeeze(array) if array.ndim > 4 else array
    if array.ndim == 2:
        return array[:, :, None]
    if array.ndim == 4:
        if volume_index is None:
            raise DaganError(f"{path} is 4-D {array.shape}; pick one volume with --volume-index")
        if not 0 <= volume_index < array.shape[3]:
            raise DaganError(f"--volume-index {volume_index} is out of range for {path} "
                             f"({array.shape[3]} volumes)")
        return array[..., volume_index]
    if array.ndim != 3:
        raise DaganError(f"{path} has {array.ndim} dimensions {array.shape}; expected a 2-D or 3-D image")
    return array


def check_nifti_header(img, path):
    """``img`` when its header describes a 2-D to 4-D image of at most :data:`MAX_VOXELS` voxels."""
    shape = tuple(int(s) for s in img.shape)
    if len(shape) < 2 or min(shape) < 1:
        raise DaganError(f"{path} has shape {shape}; expected a 2-D, 3-D or 4-D image")
    if np.prod(shape, dtype=np.float64) > MAX_VOXELS:
        raise DaganError(f"{path}: header claims shape {shape} ({np.prod(shape, dtype=np.float64):.3g} voxels); "
                         "corrupt header or not a single volume")
    return img


def read_nifti(path: Path, volume_index: int | None = None) -> Volume:
    import nibabel as nib

    try:
        img = check_nifti_header(nib.load(str(path)), path)
        img = nib.as_closest_canonical(img)
        data = np.asarray(img.dataobj)
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile, ValueError,
            nib.filebasedimages.ImageFileError) as exc:
        raise DaganError(f"cannot read NIfTI {path}: {exc or type(exc).__name__} (truncated or corrupt?)") from None
    return Volume(_to_3d(data, path, volume_index), img.affine, subject_id(path), str(path))


def _is_dicom(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM" or path.suffix.lower() in (".dcm", ".ima")


def is_dicom_folder(path: Path) -> bool:
    """True when ``path`` is a folder whose files are DICOM."""
    return path.is_dir() and any(_is_dicom(p) for p in path.iterdir() if p.is_file())


def read_dicom_series(folder: Path) -> Volume:
    """Read one DICOM series; slices sorted by position along the slice normal, reoriented to RAS+."""
    try:
        import pydicom
    except ImportError:
        raise DaganError("reading DICOM needs pydicom: pip install 'dagan-tf[dicom]'") from None
    import nibabel as nib

    slices = []
    for p in sorted(folder.iterdir()):
        if not p.is_file() or not _is_dicom(p):
            continue
        try:
            ds = pydicom.dcmread(str(p))
            pixels = ds.pixel_array.astype(np.float32)
        except Exception as exc:  # pydicom raises many types for broken files
            raise DaganError(f"unreadable DICOM file {p}: {exc}") from None
        slope = float(getattr(ds, "RescaleSlope", 1) or 1)
        intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
        slices.append((ds, pixels * slope + intercept))
    if not slices:
        raise DaganError(f"no DICOM files in {folder}")
    ds0 = slices[0][0]
    try:
        row_cos, col_cos = (np.array(ds0.ImageOrientationPatient[:3], float),
                            np.array(ds0.ImageOrientationPatient[3:], float))
        normal = np.cross(row_cos, col_cos)
        slices.sort(key=lambda s: float(np.dot(normal, np.array(s[0].ImagePositionPatient, float))))
        positions = [np.array(s[0].ImagePositionPatient, float) for s in slices]
        dr, dc = (float(v) for v in ds0.PixelSpacing)
    except AttributeError:
        raise DaganError(f"DICOM series {folder} lacks orientation/position tags") from None
    step = (positions[-1] - positions[0]) / (len(positions) - 1) if len(positions) > 1 \
        else normal * float(getattr(ds0, "SliceThickness", 1.0) or 1.0)
    # pixel_array is [row, col]; voxel (i=col, j=row, k=slice) in LPS, then to RAS.
    affine_lps = np.eye(4)
    affine_lps[:3, 0] = row_cos * dc
    affine_lps[:3, 1] = col_cos * dr
    affine_lps[:3, 2] = step
    affine_lps[:3, 3] = positions[0]
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine_lps
    shapes = {s[1].shape for s in slices}
    if len(shapes) != 1:
        raise DaganError(f"DICOM series {folder} mixes image sizes {sorted(shapes)}")
    data = np.stack([s[1].T for s in slices], axis=-1)
    img = nib.as_closest_canonical(nib.Nifti1Image(data, affine))
    return Volume(np.asarray(img.dataobj, np.float32), img.affine, folder.name, str(folder))


def read_hdf5(path: Path, key: str | None = None) -> Volume:
    """fastMRI-style HDF5: ``reconstruction_rss``/``_esc`` ``[S, H, W]`` or centred ``kspace``
    ``[S, H, W]`` (single-coil) / ``[S, C, H, W]`` (multi-coil, root-sum-of-squares)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            keys = [key] if key else [k for k in HDF5_IMAGE_KEYS if k in f] or (["kspace"] if "kspace" in f else [])
            if not keys or keys[0] not in f:
                raise DaganError(f"{path} has none of the datasets {', '.join(HDF5_IMAGE_KEYS + ('kspace',))}")
            if not isinstance(f[keys[0]], h5py.Dataset):
                raise DaganError(f"{path}: {keys[0]} is a group, not a dataset")
            array = f[keys[0]][()]
    except OSError as exc:
        raise DaganError(f"cannot read HDF5 {path}: {exc}") from None
    if keys[0] == "kspace":
        array = checked_kspace(array, path, ndims=(2, 3, 4))
        array = kspace_to_image(array if array.ndim > 2 else array[None])
    elif array.dtype.names is not None or not np.issubdtype(np.asarray(array).dtype, np.number):
        raise DaganError(f"{path}: {keys[0]} holds {array.dtype} data, not an image")
    array = np.abs(array)
    if array.ndim == 2:
        array = array[None]
    return Volume(np.transpose(array, (1, 2, 0)).astype(np.float32), np.eye(4), subject_id(path), str(path))


def complex_from_fields(array: np.ndarray, source) -> np.ndarray:
    """A structured array with ``real``/``imag`` (or ``r``/``i``) fields as complex64."""
    names = set(array.dtype.names or ())
    for re_name, im_name in (("real", "imag"), ("r", "i")):
        if {re_name, im_name} <= names:
            return (array[re_name].astype(np.float32) + 1j * array[im_name].astype(np.float32)).astype(np.complex64)
    raise DaganError(f"{source}: structured data with fields {sorted(names)}; expected real/imag or r/i")


def checked_kspace(array, source, ndims: tuple[int, ...] = (3,)) -> np.ndarray:
    """``array`` as complex64 k-space: numeric (or real/imag fields), finite, with one of ``ndims`` axes.

    NaN/Inf samples are rejected as they are in image input.
    """
    array = np.asarray(array)
    if array.dtype.names is not None:
        array = complex_from_fields(array, source)
    if not np.issubdtype(array.dtype, np.number):
        raise DaganError(f"{source}: k-space holds {array.dtype} data, not numbers")
    if array.ndim not in ndims:
        raise DaganError(f"{source}: k-space has shape {array.shape}; expected "
                         f"{' or '.join(f'{n}-D' for n in ndims)}")
    array = array.astype(np.complex64)
    if not np.all(np.isfinite(array)):
        raise DaganError(f"{source} contains NaN or Inf k-space samples")
    return array


def is_multicoil_hdf5(path: Path) -> bool:
    """True for an HDF5 file whose ``kspace`` dataset is 4-D ``[S, C, H, W]`` (measured coil data)."""
    if _suffix(Path(path)) not in (".h5", ".hdf5"):
        return False
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return isinstance(f.get("kspace"), h5py.Dataset) and f["kspace"].ndim == 4
    except OSError:
        return False


def read_coil_kspace(path: str | os.PathLike, maps_key: str = "sens_maps") -> tuple[np.ndarray, np.ndarray | None]:
    """fastMRI-style multi-coil HDF5: ``(kspace [S, C, H, W] complex64, maps [S, C, H, W] or None)``.

    The coil k-space is kept complex (as measured, centred); sensitivity maps are read from
    ``maps_key`` when the file has them.  ``ismrmrd_header`` and other datasets are ignored.
    """
    import h5py

    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            if not isinstance(f.get("kspace"), h5py.Dataset):
                raise DaganError(f"{path} has no 'kspace' dataset")
            kspace = checked_kspace(f["kspace"][()], path, ndims=(4,))
            maps = checked_kspace(f[maps_key][()], path, ndims=(4,)) if isinstance(f.get(maps_key), h5py.Dataset) \
                else None
    except OSError as exc:
        raise DaganError(f"cannot read HDF5 {path}: {exc}") from None
    if maps is not None and maps.shape != kspace.shape:
        raise DaganError(f"{path}: {maps_key} {maps.shape} does not match kspace {kspace.shape}")
    return kspace, maps


def kspace_to_image(kspace: np.ndarray) -> np.ndarray:
    """Centred k-space ``[S, H, W]`` or ``[S, C, H, W]`` -> magnitude images ``[S, H, W]`` (RSS over coils)."""
    axes = (-2, -1)
    image = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(kspace, axes=axes), norm="ortho"), axes=axes)
    if kspace.ndim == 4:
        return np.sqrt(np.sum(np.abs(image) ** 2, axis=1))
    return np.abs(image)


def _first_array(mapping, path, key):
    if key is not None:
        if key not in mapping:
            raise DaganError(f"{path} has no key {key!r}")
        return mapping[key]
    for k in NPZ_KEYS:
        if k in mapping:
            return mapping[k]
    candidates = [k for k in mapping if not k.startswith("__")]
    numeric = [k for k in candidates if np.ndim(mapping[k]) >= 2]
    if len(numeric) != 1:
        raise DaganError(f"{path}: cannot tell which array is the image among {candidates}; pass --key")
    return mapping[numeric[0]]


def read_numpy(path: Path, key: str | None = None) -> np.ndarray:
    """The array of a ``.npy``, or the image array of a ``.npz`` (``key``, else :data:`NPZ_KEYS`, else its one
    array of ≥ 2 dimensions).  Pickled members (object arrays) are never loaded: an ``.npz`` loads its members
    lazily, so that refusal comes from the member read, not from ``np.load``."""
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            return loaded
        with loaded:
            return np.asarray(_first_array(loaded, path, key))
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        if "allow_pickle=False" in str(exc):
            raise DaganError(f"cannot read {path}: it holds pickled Python objects (object arrays), "
                             "which dagan-tf never loads; save plain numeric arrays") from None
        raise DaganError(f"cannot read {path}: {exc}") from None


def read_mat(path: Path, key: str | None = None) -> np.ndarray:
    import h5py
    import scipy.io

    if h5py.is_hdf5(path):  # MATLAB v7.3; h5py sees the transposed array
        try:
            with h5py.File(path, "r") as f:
                datasets = {k: f[k] for k in f if isinstance(f[k], h5py.Dataset)}
                return np.asarray(_first_array(datasets, path, key)[()]).T
        except OSError as exc:
            raise DaganError(f"cannot read MATLAB v7.3 file {path}: {exc}") from None
    try:
        return np.asarray(_first_array(scipy.io.loadmat(path), path, key))
    except (ValueError, OSError, TypeError) as exc:
        raise DaganError(f"cannot read MATLAB file {path}: {exc}") from None


def read_png(path: Path) -> np.ndarray:
    import tensorflow as tf

    raw = path.read_bytes()
    dtype = tf.uint16 if len(raw) > 24 and raw[24] == 16 else tf.uint8  # IHDR bit depth
    try:
        image = tf.io.decode_png(raw, channels=0, dtype=dtype).numpy()
    except tf.errors.OpError as exc:
        raise DaganError(f"cannot read PNG {path}: {exc.message}") from None
    image = image.astype(np.float32)
    return image[..., 0] if image.shape[-1] in (1, 2) else image[..., :3].mean(-1)


def read_volume(path: str | os.PathLike, volume_index: int | None = None, key: str | None = None) -> Volume:
    """Read any supported file or DICOM folder into a :class:`Volume` (raises :class:`DaganError`)."""
    path = Path(path)
    if not path.exists():
        raise DaganError(f"path not found: {path}")
    if path.is_dir():
        if is_dicom_folder(path):
            return read_dicom_series(path)
        raise DaganError(f"{path} is a folder without DICOM files")
    suffix = _suffix(path)
    if suffix in (".nii", ".nii.gz"):
        return read_nifti(path, volume_index)
    if suffix in (".h5", ".hdf5"):
        vol = read_hdf5(path, key)
    elif suffix in (".npy", ".npz"):
        vol = Volume(read_numpy(path, key))
    elif suffix == ".mat":
        vol = Volume(read_mat(path, key))
    elif suffix == ".png":
        vol = Volume(read_png(path))
    elif _is_dicom(path):
        raise DaganError(f"{path} is a single DICOM file; pass its series folder")
    else:
        raise DaganError(f"unsupported file type: {path} (supported: {', '.join(VOLUME_SUFFIXES)}, DICOM folders)")
    vol.data = _to_3d(vol.data, path, volume_index).astype(np.float32)
    vol.subject, vol.source = subject_id(path), str(path)
    return vol


def find_sources(paths: list[str | os.PathLike]) -> list[Path]:
    """Expand files and folders into readable sources (files and DICOM series folders), sorted.

    A folder that holds DICOM files is one series; other folders are searched
    recursively.  Raises on missing paths and on folders without any source.
    """
    found: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise DaganError(f"path not found: {p}")
        if p.is_file():
            found.append(p)
            continue
        if is_dicom_folder(p):
            found.append(p)
            continue
        inside = []
        for root, dirs, files in os.walk(p):
            dirs.sort()
            root = Path(root)
            if root != p and is_dicom_folder(root):
                inside.append(root)
                dirs.clear()
                continue
            inside += [root / f for f in sorted(files) if _suffix(root / f) in VOLUME_SUFFIXES]
        if not inside:
            raise DaganError(f"no readable images in folder {p}")
        found += inside
    return sorted(set(found))
