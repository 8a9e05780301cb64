"""Reconstruct a whole volume slice by slice and write it as NIfTI.

Image input (NIfTI or any reader format): the volume is normalised to [0, 1]
(min-max, as ``prepare``), each axial slice is fitted to the model size (as
``prepare --fit resize``), undersampled with the mask, reconstructed, fitted back
and mapped to the input's intensity range.  The output keeps the input's shape,
orientation and affine.

k-space input (HDF5 with ``kspace`` ``[S, H, W]`` centred and already
undersampled, and ``mask`` ``[H, W]`` or ``[S, H, W]``): ``H, W`` must equal the
model size; the zero-filled images are scaled by their volume maximum, and the
output (identity affine) is in the zero-filled intensity scale.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
import tensorflow as tf

from dagan_tf import kspace as ks
from dagan_tf import recipes
from dagan_tf.data.prepare import fit_slices, normalise_volume
from dagan_tf.data.readers import check_nifti_header, checked_kspace, read_volume
from dagan_tf.errors import DaganError
from dagan_tf.models.network_io import magnitude_or_dc
from dagan_tf.masks import MaskSpec
from dagan_tf.outputs import atomic_output_file, check_new_output
from dagan_tf.progress import Stage

BATCH = 16


@dataclass
class LoadedModel:
    """A network from an export or a run: ``reconstruct`` maps undersampled centred k-space to magnitudes."""

    size: int
    # (kspace0 [N, S, S], mask) -> (reconstruction [N, S, S, C], extras such as a refined network's refinement)
    network: Callable[[tf.Tensor, tf.Tensor], tuple[tf.Tensor, dict]]
    with_dc: Callable[[tf.Tensor, tf.Tensor], tf.Tensor] | None = None  # exports' from_kspace signature
    regime: str = "magnitude"  # the k-space simulation the network was trained in (the run's / export's record)
    mask: MaskSpec | None = None  # the mask it was trained with (None: an export without that record)
    note: str | None = None  # an export built for another CPU's kernels says so (export.kernels_note)
    precision: str = "float32"  # the network's compute precision (an export's is fixed when it is exported)

    def reconstruct(self, kspace0: tf.Tensor, mask: tf.Tensor, dc: bool) -> tf.Tensor:
        """``[N, S, S, K]`` from ``kspace0 [N, S, S]`` (complex, zero off the mask) and ``mask``: the magnitude,
        and for a refined network (K = 2) what the refinement changed (λ·V, image units)."""
        out, extras = self.network(kspace0, mask)
        image = self.with_dc(kspace0, mask) if dc and self.with_dc is not None \
            else magnitude_or_dc(out, kspace0, mask, None, dc)
        change = [tf.cast(extras["refinement"], tf.float32)] if "refinement" in extras else []
        return tf.concat([image, *change], axis=-1)


def load_model(path: str | Path, precision: str = "float32") -> LoadedModel:
    """The network of an export folder (signatures checked first; it computes in the precision it was exported
    with) or a run folder (computing in ``precision``, ``float32`` or ``bfloat16``)."""
    path = Path(path)
    if (path / "saved_model.pb").is_file():
        from dagan_tf.export import export_metadata, kernels_note, kspace_planes, load_export

        network, size, from_kspace = load_export(path)  # network: all outputs of serving_default
        metadata = export_metadata(path)
        data = metadata.get("data", {})
        return LoadedModel(size, network, lambda k0, m: from_kspace(**kspace_planes(k0, m))["reconstruction"],
                           data.get("regime", "magnitude"), _training_mask(data),
                           kernels_note(path, metadata.get("kernels")), metadata.get("precision", "float32"))
    if (path / "config.yaml").is_file():
        from dagan_tf.models.network_io import run_network
        from dagan_tf.training.trained import load_run_network

        network, config = load_run_network(path, inference=True, precision=precision)
        contract = recipes.network_contract(config)

        def reconstruct(kspace0, mask):
            return run_network(network, contract, ks.ifft2c(kspace0), kspace0, mask)

        return LoadedModel(config["model"]["image_size"], reconstruct, regime=config["data"]["regime"],
                           mask=_training_mask(config["data"]), precision=precision)
    raise DaganError(f"{path} is neither an export (saved_model.pb) nor a run folder (config.yaml)")


def _training_mask(data: dict) -> MaskSpec | None:
    """The (fixed) mask of a run's or export's ``data`` record, if it has one."""
    if "mask" not in data:
        return None
    return MaskSpec(data["mask"], data.get("ratio"), data.get("mask_seed", 0), data.get("acs"))


def _unfit(images: np.ndarray, shape: tuple[int, int], size: int) -> np.ndarray:
    """Inverse of :func:`fit_slices` for ``[Z, size, size, K]`` -> ``[Z, h, w, K]``."""
    h, w = shape
    scale = size / max(h, w)
    inner = (max(1, round(h * scale)), max(1, round(w * scale)))
    x = tf.image.resize_with_crop_or_pad(images, *inner)
    return tf.image.resize(x, (h, w), method="bilinear", antialias=True).numpy()


def refinement_path(out: Path) -> Path:
    """Where ``predict`` writes a refined network's change map beside ``out`` (``x.nii.gz`` -> ``x_refinement.nii.gz``)."""
    name = out.name
    suffix = ".nii.gz" if name.lower().endswith(".nii.gz") else out.suffix
    return out.with_name(f"{name[:len(name) - len(suffix)]}_refinement{suffix}")


def _reconstruct(model: LoadedModel, kspace0: np.ndarray, mask: np.ndarray, dc: bool) -> np.ndarray:
    """``[Z, S, S, K]`` (:meth:`LoadedModel.reconstruct`) of ``kspace0 [Z, S, S]`` (undersampled) in batches."""
    out = []
    with Stage("predict", len(kspace0), "slices") as stage:
        for i in range(0, len(kspace0), BATCH):
            m = mask if mask.ndim == 2 else mask[i:i + BATCH]
            k = tf.constant(kspace0[i:i + BATCH], tf.complex64)
            out.append(model.reconstruct(k, tf.constant(m, tf.float32), dc).numpy())
            stage.update(len(k))
    return np.concatenate(out)


def predict_volume(model: str | Path, source: str | Path, out: str | Path, mask: MaskSpec | None = None,
                   dc: bool = False, overwrite: bool = False, regime: str | None = None, phase_seed: int = 0,
                   echo: Callable[[str], None] = lambda _: None, precision: str = "float32") -> Path:
    """Reconstruct ``source`` with ``model`` into the NIfTI file ``out`` (written atomically); a refined
    network's change map λ·V goes to :func:`refinement_path` (same geometry and intensity scale).  A run folder
    computes in ``precision`` (``float32`` or ``bfloat16``), an export in its own.

    Image input is undersampled with ``mask`` (default: the model's training mask, when its run or export
    records it) in ``regime`` (default: a run's own, else ``magnitude``): ``phase``
    simulates the k-space of ``slice·exp(iφ)`` with the smooth phase of ``(phase_seed, slice index)``
    (:mod:`dagan_tf.data.pipeline`).  ``echo`` is told when slices are resampled and which regime is used.
    """
    out = check_new_output(out, overwrite)
    source = Path(source)
    is_kspace = source.suffix.lower() in (".h5", ".hdf5")
    if mask is not None:
        mask.validate()
    loaded = load_model(model, precision)
    if loaded.note is not None:
        echo(loaded.note)
    echo(f"computing in {loaded.precision}")
    if not is_kspace and mask is None:
        if loaded.mask is None:
            raise DaganError("image input needs --mask and --ratio to simulate undersampling (this export does "
                             "not record its training mask)")
        mask = replace(loaded.mask, per_sample=False)  # one mask for the volume, as below
        echo(f"mask: the model's own ({mask.describe()})")
    if is_kspace:
        if regime is not None:
            raise DaganError("--regime applies to image input; k-space input carries its own phase")
        volume, affine, header = _predict_kspace(loaded, source, dc), np.eye(4), None
    else:
        regime = regime or loaded.regime
        if regime == "phase":
            echo(f"phase regime: k-space simulated from each slice times a smooth random phase (seed {phase_seed})")
        volume, affine, header = _predict_image(loaded, source, mask, dc, echo, regime, phase_seed)
    if volume.shape[-1] == 2:
        change_out = check_new_output(refinement_path(out), overwrite)
        with atomic_output_file(change_out, overwrite) as tmp:
            nib.save(nib.Nifti1Image(volume[..., 1].astype(np.float32), affine, header), str(tmp))
        echo(f"written {change_out} (what the refinement changed, λ·V, in the output's intensity units)")
    with atomic_output_file(out, overwrite) as tmp:
        nib.save(nib.Nifti1Image(volume[..., 0].astype(np.float32), affine, header), str(tmp))
    return out


def _predict_image(model: LoadedModel, source: Path, mask: MaskSpec, dc: bool, echo, regime: str = "magnitude",
                   phase_seed: int = 0):
    size = model.size
    if source.name.lower().endswith((".nii", ".nii.gz")):
        try:
            img = check_nifti_header(nib.load(str(source)), source)
            raw = np.asarray(img.dataobj, np.float32)
        except (OSError, EOFError, ValueError, nib.filebasedimages.ImageFileError) as exc:
            raise DaganError(f"cannot read NIfTI {source}: {exc}") from None
        if raw.ndim != 3:
            raise DaganError(f"{source} has shape {raw.shape}; predict takes a 3-D volume")
        to_ras = nib.orientations.ornt_transform(nib.orientations.io_orientation(img.affine),
                                                 nib.orientations.axcodes2ornt("RAS"))
        data, affine, header = nib.orientations.apply_orientation(raw, to_ras), img.affine, img.header
    else:
        vol = read_volume(source)
        data, affine, header, to_ras = vol.data, vol.affine, None, None
    normalised = normalise_volume(data, "minmax", str(source))
    if normalised is None:
        raise DaganError(f"{source} is constant; nothing to reconstruct")
    if data.shape[:2] != (size, size):
        echo(f"resampling {data.shape[0]}×{data.shape[1]} slices to the model's {size}×{size} and back")
    slices = fit_slices(normalised, size, "resize")  # [Z, S, S]
    m = mask.build((size, size))
    if regime == "phase":
        from dagan_tf.coils import phase_maps
        from dagan_tf.data.pipeline import PREDICT_PHASE_STREAM

        phase = phase_maps(phase_seed, PREDICT_PHASE_STREAM, np.arange(len(slices)), (size, size))
        slices = slices * np.exp(1j * phase).astype(np.complex64)
    kspace0, _ = ks.undersample(slices, m)
    recon = _reconstruct(model, kspace0.numpy(), m, dc)
    recon = np.transpose(_unfit(recon, data.shape[:2], size), (1, 2, 0, 3))  # [X, Y, Z, K]
    lo, hi = float(data.min()), float(data.max())
    result = recon * (hi - lo) + np.array([lo, 0.0])[:recon.shape[-1]]  # a change map has no offset
    if to_ras is not None:
        back = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"),
                                               nib.orientations.io_orientation(affine))
        result = nib.orientations.apply_orientation(result, back)
    return result, affine, header


def _predict_kspace(model: LoadedModel, source: Path, dc: bool) -> np.ndarray:
    import h5py

    size = model.size
    try:
        with h5py.File(source, "r") as f:
            if not all(isinstance(f.get(k), h5py.Dataset) for k in ("kspace", "mask")):
                raise DaganError(f"{source} needs datasets 'kspace' [S, H, W] and 'mask' for k-space input")
            kspace0, mask = f["kspace"][()], f["mask"][()]
    except OSError as exc:
        raise DaganError(f"cannot read HDF5 {source}: {exc}") from None
    kspace0 = checked_kspace(kspace0, source)
    if not np.issubdtype(mask.dtype, np.number) or not np.all(np.isin(mask, (0, 1))):
        raise DaganError(f"{source}: mask must hold only 0 and 1")
    mask = mask.astype(np.float32)
    if kspace0.shape[1:] != (size, size):
        raise DaganError(f"{source} k-space has shape {kspace0.shape}; this model needs [S, {size}, {size}]")
    if mask.shape not in ((size, size), kspace0.shape):
        raise DaganError(f"{source} mask shape {mask.shape} does not match k-space {kspace0.shape}")
    scale = float(np.abs(ks.ifft2c(kspace0 * mask).numpy()).max()) or 1.0
    recon = _reconstruct(model, kspace0 * mask / scale, mask, dc)
    return np.transpose(recon * scale, (1, 2, 0, 3))
