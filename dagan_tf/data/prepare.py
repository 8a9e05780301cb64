"""Turn MRI volumes into a prepared dataset of 2-D axial slices.

Layout of a prepared directory (no pickle anywhere)::

    manifest.json          sources, subjects per split, slice counts, settings
    train_images.npy       float32 [N, S, S] in [0, 1]
    train_slices.csv       index, subject, source, slice (the source's axial slice index), one row per image
    train_labels.npy       uint8 [N, S, S] label maps aligned with the images (only with ``labels``)
    val_images.npy / val_slices.csv / test_images.npy / test_slices.csv

Normalisation is per volume: ``minmax`` (default) maps ``[min, max] -> [0, 1]``;
for non-negative scans with a zero background it is the original DAGAN's
``x / max``, and it also handles z-scored data (BraTS) whose background is a
negative constant.  ``max`` is ``x / max`` exactly (negative values are an error).
Slices whose foreground (pixels above 5 % of the volume range) covers less than
``min_foreground`` of the slice are dropped.  The split is by subject.

``slabs=K`` cuts every volume into K contiguous axial slabs (with a 4-slice gap)
that count as separate subjects.  It exists for the single-volume demo only:
slabs of one person are not independent subjects, so numbers from such a split
are not comparable with a subject split.
"""
from __future__ import annotations

import csv
import fnmatch
import glob
import json
import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from dagan_tf.data.readers import Volume, find_sources, is_multicoil_hdf5, read_coil_kspace, read_volume, subject_id
from dagan_tf.errors import DaganError
from dagan_tf.outputs import atomic_output_dir, check_new_output
from dagan_tf.progress import progress

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
FOREGROUND_THRESHOLD = 0.05
FIT_MODES = ("resize", "pad-crop")
NORMALISATIONS = ("minmax", "max")
SLAB_GAP = 4
PREPARED_FORMAT = "dagan-tf prepared v1"


@dataclass
class PrepareConfig:
    """Settings of :func:`prepare`; all are recorded in the manifest."""

    size: int = 256
    split: tuple[float, float, float] = (0.7, 0.1, 0.2)
    seed: int = 0
    min_foreground: float = 0.1
    fit: str = "resize"
    normalise: str = "minmax"
    volume_index: int | None = None
    key: str | None = None
    subject_regex: str | None = None
    exclude: tuple[str, ...] = field(default_factory=tuple)
    slabs: int = 1
    coils: int = 0
    noise_snr: float | None = None
    phase: bool = True
    labels: tuple[str, ...] = field(default_factory=tuple)  # label volumes (files, folders, globs)
    label_key: str = "seg"  # the label array's key in .npz/.mat files
    label_merge: str | None = None  # a LABEL_MERGES name

    def validate(self) -> None:
        if len(self.split) != 3 or any(s < 0 for s in self.split) or not np.isclose(sum(self.split), 1.0):
            raise DaganError(f"--split needs three non-negative fractions summing to 1, got {self.split}")
        if self.size < 16:
            raise DaganError(f"--size must be at least 16, got {self.size}")
        if not 0 <= self.min_foreground < 1:
            raise DaganError(f"--min-foreground must be in [0, 1), got {self.min_foreground}")
        if self.fit not in FIT_MODES:
            raise DaganError(f"--fit must be one of {', '.join(FIT_MODES)}, got {self.fit!r}")
        if self.normalise not in NORMALISATIONS:
            raise DaganError(f"--normalise must be one of {', '.join(NORMALISATIONS)}, got {self.normalise!r}")
        if self.slabs < 1:
            raise DaganError(f"--slabs must be at least 1, got {self.slabs}")
        if self.coils < 0 or (self.noise_snr is not None and not self.noise_snr > 0):
            raise DaganError(f"--coils must be >= 0 and --noise-snr > 0, got {self.coils}, {self.noise_snr}")
        if self.noise_snr is not None and not self.coils:
            raise DaganError("--noise-snr needs --coils")
        if self.label_merge is not None and self.label_merge not in LABEL_MERGES:
            raise DaganError(f"--label-merge must be one of {', '.join(LABEL_MERGES)}, got {self.label_merge!r}")
        if self.label_merge is not None and not self.labels:
            raise DaganError("--label-merge needs --labels")
        if self.subject_regex:
            try:
                re.compile(self.subject_regex)
            except re.error as exc:
                raise DaganError(f"--subject-regex is not a valid regular expression: {exc}") from None


def normalise_volume(data: np.ndarray, mode: str, source: str) -> np.ndarray | None:
    """Map a volume to [0, 1] (see module doc); ``None`` for an all-constant volume.

    Raises on NaN/Inf voxels and, for ``max``, on negative values.
    """
    if not np.all(np.isfinite(data)):
        raise DaganError(f"{source} contains NaN or Inf voxels")
    lo, hi = float(data.min()), float(data.max())
    if hi <= lo or (mode == "max" and hi <= 0):
        return None
    if mode == "max":
        if lo < 0:
            raise DaganError(f"{source} has negative values; use --normalise minmax")
        return (data / hi).astype(np.float32)
    return ((data - lo) / (hi - lo)).astype(np.float32)


def fit_slices(slices: np.ndarray, size: int, mode: str, labels: bool = False) -> np.ndarray:
    """``[X, Y, Z]`` slices -> ``[Z, size, size]``.

    ``resize``: scale so the longer in-plane side is ``size`` (bilinear with
    anti-aliasing, aspect ratio kept), then zero-pad the other side, centred.
    ``pad-crop``: centre zero-pad / crop without scaling.  ``labels``: integer label
    maps, resampled nearest-neighbour, returned as uint8 (images: float32 clipped to [0, 1]).
    """
    import tensorflow as tf

    images = np.transpose(slices, (2, 0, 1))[..., None].astype(np.float32)  # [Z, X, Y, 1]
    h, w = images.shape[1:3]
    if mode == "resize" and (h, w) != (size, size):
        scale = size / max(h, w)
        new = (max(1, round(h * scale)), max(1, round(w * scale)))
        images = (tf.image.resize(images, new, method="nearest") if labels
                  else tf.image.resize(images, new, method="bilinear", antialias=True)).numpy()
    out = tf.image.resize_with_crop_or_pad(images, size, size).numpy()[..., 0]
    return np.rint(out).astype(np.uint8) if labels else np.clip(out, 0.0, 1.0).astype(np.float32)


def foreground_fraction(images: np.ndarray) -> np.ndarray:
    """Fraction ``[Z]`` of pixels above :data:`FOREGROUND_THRESHOLD` per ``[Z, H, W]`` slice."""
    return np.mean(images > FOREGROUND_THRESHOLD, axis=(1, 2))


def assign_splits(subjects: list[str], fractions, seed: int) -> dict[str, list[str]]:
    """Deterministic subject split: sorted subjects permuted by ``seed``, cut by ``fractions``.

    Every split with a positive fraction gets at least one subject.
    """
    subjects = sorted(set(subjects))
    wanted = [i for i, f in enumerate(fractions) if f > 0]
    if len(subjects) < len(wanted):
        raise DaganError(f"{len(subjects)} subject(s) cannot fill {len(wanted)} splits "
                         f"{dict(zip(SPLITS, fractions))}; add subjects or change --split")
    order = [subjects[i] for i in np.random.RandomState(seed).permutation(len(subjects))]
    counts = [int(round(f * len(subjects))) for f in fractions]
    for i in wanted:
        counts[i] = max(counts[i], 1)
    while sum(counts) > len(subjects):
        counts[int(np.argmax(counts))] -= 1
    counts[wanted[0]] += len(subjects) - sum(counts)
    out, start = {}, 0
    for name, n in zip(SPLITS, counts):
        out[name] = order[start:start + n]
        start += n
    return out


def _subject_of(volume: Volume, regex: str | None) -> str:
    if not regex:
        return volume.subject
    match = re.search(regex, volume.source)
    if not match:
        raise DaganError(f"--subject-regex {regex!r} does not match {volume.source}")
    return match.group(1) if match.groups() else match.group(0)


def _slabs(slices: np.ndarray, n: int, gap: int = SLAB_GAP) -> list[slice]:
    """Cut ``[Z, S, S]`` into ``n`` contiguous slabs (index ranges), dropping ``gap`` slices at each
    inner boundary."""
    if n == 1:
        return [slice(0, len(slices))]
    bounds = np.linspace(0, len(slices), n + 1).astype(int)
    return [slice(bounds[k] + (gap if k else 0), bounds[k + 1]) for k in range(n)
            if bounds[k + 1] > bounds[k] + (gap if k else 0)]


def load_slices(volume: Volume, config: PrepareConfig, labels: np.ndarray | None = None):
    """``(slices [Z, S, S], axial indices [Z], label slices [Z, S, S] uint8 or None)`` of one volume:
    normalised, fitted, with foreground ≥ ``min_foreground``; ``None`` for a constant volume.
    ``labels`` is the volume's label map (same shape), fitted nearest-neighbour."""
    data = normalise_volume(volume.data, config.normalise, volume.source)
    if data is None:
        return None
    images = fit_slices(data, config.size, config.fit)
    kept = np.flatnonzero(foreground_fraction(images) >= config.min_foreground)
    label_slices = None if labels is None else fit_slices(labels, config.size, config.fit, labels=True)[kept]
    return images[kept], kept, label_slices


# FreeSurfer aseg labels -> 1 CSF, 2 cortical grey matter, 3 white matter, 4 deep grey matter; others 0.
FREESURFER_CLASSES = {
    1: (4, 5, 14, 15, 24, 31, 43, 44, 63, 72),  # ventricles, CSF, choroid plexus
    2: (3, 8, 42, 47),  # cerebral and cerebellar cortex
    3: (2, 7, 16, 28, 41, 46, 60, 77, 85, 251, 252, 253, 254, 255),  # white matter, brainstem, ventral DC, CC
    4: (10, 11, 12, 13, 17, 18, 26, 49, 50, 51, 52, 53, 54, 58),  # thalamus, basal ganglia, hippocampus, amygdala
}
LABEL_MERGES = {"freesurfer": ("background", "CSF", "cortical grey matter", "white matter", "deep grey matter")}


def merge_labels(labels: np.ndarray, merge: str | None) -> np.ndarray:
    """Integer label volume -> uint8 classes: unchanged (values must be 0..255) or merged (``freesurfer``)."""
    values = np.rint(labels)
    if values.min() < 0 or values.max() > 255 or not np.allclose(values, labels):
        raise ValueError("labels must be integers in 0..255")
    values = values.astype(np.uint8)
    if merge is None:
        return values
    table = np.zeros(256, np.uint8)
    for cls, members in FREESURFER_CLASSES.items():
        table[list(members)] = cls
    return table[values]


def _label_volume(image_path: Path, label_paths: list[Path], image: Volume, config: PrepareConfig) -> np.ndarray:
    """The label map paired with ``image``: the same file (an .npz/.mat with ``label_key``) or the label file
    whose name starts with the image's name (``sub1_seg.nii.gz`` for ``sub1.nii.gz``)."""
    stem = subject_id(image_path)
    matches = [p for p in label_paths if p == image_path or (p != image_path and subject_id(p).startswith(stem))]
    if not matches:
        raise DaganError(f"no label volume for {image_path} among --labels (expected {stem}*)")
    path = matches[0]
    volume = read_volume(path, config.volume_index,
                         config.label_key if path.suffix.lower() in (".npz", ".mat", ".h5", ".hdf5") else None)
    if volume.data.shape != image.data.shape:
        raise DaganError(f"label volume {path} has shape {volume.data.shape}, its image {image_path} "
                         f"{image.data.shape}")
    try:
        return merge_labels(volume.data, config.label_merge)
    except ValueError as exc:
        raise DaganError(f"label volume {path}: {exc}") from None


def prepare(sources: list[str], out: str | Path, config: PrepareConfig, overwrite: bool = False) -> dict:
    """Prepare ``sources`` into ``out`` (written atomically); returns the manifest."""
    config.validate()
    check_new_output(out, overwrite)
    paths = [p for p in find_sources(sources)
             if not any(fnmatch.fnmatch(p.name, pattern) for pattern in config.exclude)]
    if not paths:
        raise DaganError("no sources left after --exclude")
    measured = [is_multicoil_hdf5(p) for p in paths]
    if any(measured) and not all(measured):
        raise DaganError("sources mix measured multi-coil k-space and magnitude images; prepare them separately")
    if any(measured) and config.coils:
        raise DaganError("--coils simulates coils from magnitude images; these sources have measured coil k-space")
    label_paths = find_sources([m for pattern in config.labels for m in (sorted(glob.glob(pattern)) or [pattern])]) \
        if config.labels else []
    if label_paths and any(measured):
        raise DaganError("--labels pairs label maps with image volumes, not with measured k-space")
    per_subject: dict[str, list[tuple]] = {}
    for path in progress(paths, "prepare", len(paths), "volumes"):
        if measured[0]:
            subject, loaded = subject_id(path), load_coil_slices(path, config)
            loaded = loaded if loaded is None else (*loaded[:2], None, *loaded[2:])
        else:
            volume = read_volume(path, config.volume_index, config.key)
            labels = _label_volume(path, label_paths, volume, config) if label_paths else None
            subject, loaded = _subject_of(volume, config.subject_regex), load_slices(volume, config, labels)
            loaded = loaded if loaded is None else (*loaded, None, None)
        if loaded is None:
            log.warning("skipping %s: the volume is constant (all zero?)", path)
            continue
        slices, axial, label_slices, kspace, maps = loaded
        if len(slices) == 0:
            log.warning("skipping %s: no slice has %.0f%% foreground", path, 100 * config.min_foreground)
            continue
        for k, slab in enumerate(_slabs(slices, config.slabs)):
            name = subject if config.slabs == 1 else f"{subject}-slab{k}"
            per_subject.setdefault(name, []).append((str(path), slices[slab], axial[slab],
                                                     None if kspace is None else kspace[slab],
                                                     None if maps is None else maps[slab],
                                                     None if label_slices is None else label_slices[slab]))
    if not per_subject:
        raise DaganError("no usable slices: every volume was empty or constant")
    splits = assign_splits(list(per_subject), config.split, config.seed)
    with atomic_output_dir(out, overwrite) as tmp:
        return _write_splits(tmp, splits, per_subject, config, [str(p) for p in paths])


def _write_splits(folder: Path, splits, per_subject, config: PrepareConfig, sources) -> dict:
    counts = {}
    entries = [e for parts in per_subject.values() for e in parts]
    measured = entries[0][3] is not None
    for split, subjects in splits.items():
        rows, arrays, kspaces, maps, labels = [], [], [], [], []
        for subject in subjects:
            for source, slices, axial, kspace, coil_maps, label_slices in per_subject[subject]:
                for k in axial:
                    rows.append((len(rows), subject, source, int(k)))
                arrays.append(slices)
                kspaces.append(kspace)
                maps.append(coil_maps)
                labels.append(label_slices)
        size = config.size
        images = np.concatenate(arrays) if arrays else np.zeros((0, size, size), np.float32)
        np.save(folder / f"{split}_images.npy", images)
        if config.labels:
            np.save(folder / f"{split}_labels.npy", np.concatenate(labels) if labels
                    else np.zeros((0, size, size), np.uint8))
        if config.coils:
            _write_coil_kspace(folder, split, images, config)
        elif measured:
            coils = entries[0][3].shape[1]
            np.save(folder / f"{split}_kspace.npy", np.concatenate(kspaces) if kspaces
                    else np.zeros((0, coils, size, size), np.complex64))
            if all(e[4] is not None for e in entries):
                np.save(folder / f"{split}_maps.npy", np.concatenate(maps) if maps
                        else np.zeros((0, coils, size, size), np.complex64))
        with open(folder / f"{split}_slices.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(("index", "subject", "source", "slice"))
            writer.writerows(rows)
        counts[split] = {"subjects": len(subjects), "slices": len(rows)}
    manifest = {
        "format": PREPARED_FORMAT,
        "sources": sources,
        "subjects": splits,
        "counts": counts,
        "config": {**asdict(config), "foreground_threshold": FOREGROUND_THRESHOLD},
        "normalisation": "per volume: (x - min) / (max - min)" if config.normalise == "minmax"
        else "per volume: x / max",
        "value_range": [0.0, 1.0],
    }
    if config.labels:
        names = LABEL_MERGES.get(config.label_merge)
        manifest["labels"] = {
            "classes": len(names) if names else int(max(int(np.max(e[5], initial=0)) for e in entries)) + 1,
            "names": list(names) if names else None, "merge": config.label_merge,
            "resampling": "nearest-neighbour, aligned with the image slices", "key": config.label_key}
    if measured:
        manifest["multicoil"] = {
            "regime": "measured", "coils": int(entries[0][3].shape[1]),
            "maps": "from the files" if all(e[4] is not None for e in entries) else "none (use ESPIRiT)",
            "kspace": "measured, cropped/padded to the size in the image domain, divided by the volume's maximum "
                      "root-sum-of-squares magnitude, [N, C, S, S] complex64",
            "target": "root-sum-of-squares magnitude / its volume maximum"}
    if config.coils:
        manifest["multicoil"] = {
            "regime": "simulated", "coils": config.coils, "maps": "birdcage, sum |S|^2 = 1",
            "phase": "smooth random (Gaussian-filtered field to +-pi + linear ramp), seeded by (seed, split, slice)"
            if config.phase else "none (real-valued images)",
            "noise_snr": config.noise_snr, "kspace": "centred orthonormal, fully sampled, [N, C, S, S] complex64"}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def _crop_or_pad(array: np.ndarray, size: int) -> np.ndarray:
    """Centre crop / zero-pad the last two axes of ``array`` to ``size × size`` (complex kept)."""
    out = array
    for axis in (-2, -1):
        n = out.shape[axis]
        if n > size:
            start = (n - size) // 2
            out = np.take(out, np.arange(start, start + size), axis=axis)
        elif n < size:
            pad = [(0, 0)] * out.ndim
            pad[axis] = ((size - n) // 2, size - n - (size - n) // 2)
            out = np.pad(out, pad)
    return out


def load_coil_slices(path: Path, config: PrepareConfig):
    """Measured multi-coil HDF5 -> ``(slices [Z, S, S], axial [Z], kspace [Z, C, S, S], maps or None)``.

    The coil images are centre cropped/padded to ``size`` in the image domain (k-space is never
    resampled), the target is their root-sum-of-squares magnitude, and magnitude and k-space are
    divided by the volume's maximum magnitude.  ``None`` for an all-zero volume.
    """
    from dagan_tf import kspace as ks

    if config.fit != "pad-crop":
        raise DaganError(f"{path}: measured k-space is cropped, never resized; pass --fit pad-crop")
    kspace, maps = read_coil_kspace(path)
    images = _crop_or_pad(ks.ifft2c(kspace).numpy(), config.size)
    rss = np.sqrt(np.sum(np.abs(images) ** 2, axis=1))
    scale = float(rss.max())
    if scale <= 0:
        return None
    slices = (rss / scale).astype(np.float32)
    kept = np.flatnonzero(foreground_fraction(slices) >= config.min_foreground)
    coil_kspace = (ks.fft2c(images[kept]).numpy() / scale).astype(np.complex64)
    coil_maps = None if maps is None else _crop_or_pad(maps, config.size)[kept].astype(np.complex64)
    return slices[kept], kept, coil_kspace, coil_maps


def _write_coil_kspace(folder: Path, split: str, images: np.ndarray, config: PrepareConfig) -> None:
    """``{split}_kspace.npy [N, C, S, S]`` simulated from ``images`` and ``{split}_maps.npy [1, C, S, S]``."""
    from dagan_tf.coils import birdcage_maps, simulate_coil_kspace, slice_rng, smooth_phase

    size = images.shape[1]
    maps = birdcage_maps(config.coils, (size, size))
    np.save(folder / f"{split}_maps.npy", maps[None])
    kspace = np.lib.format.open_memmap(folder / f"{split}_kspace.npy", mode="w+", dtype=np.complex64,
                                       shape=(len(images), config.coils, size, size))
    for i in progress(range(len(images)), f"simulate {config.coils}-coil k-space ({split})", len(images), "slices"):
        rng = slice_rng(config.seed, SPLITS.index(split), i)
        phase = smooth_phase((size, size), rng) if config.phase else None
        kspace[i] = simulate_coil_kspace(images[i], maps, rng, config.noise_snr, phase)
    kspace.flush()
    del kspace


@dataclass
class PreparedSplit:
    """One split of a prepared directory: ``images [N, S, S]`` (memory-mapped) and per-slice subjects.

    Multi-coil splits also have ``kspace [N, C, S, S]`` (fully sampled, centred) and ``maps``
    ``[1 or N, C, S, S]`` (the true or measured sensitivities), both memory-mapped.
    """

    images: np.ndarray  # float32 [N, S, S] on [0, 1]
    subjects: np.ndarray  # str [N]: the subject of each slice
    sources: np.ndarray  # str [N]: the file each slice came from
    slice_numbers: np.ndarray  # int [N]: each slice's index in its volume
    kspace: np.ndarray | None = None  # complex64 [N, C, S, S], multi-coil splits only
    maps: np.ndarray | None = None  # complex64 [1 or N, C, S, S], multi-coil splits only
    labels: np.ndarray | None = None  # uint8 [N, S, S] class per pixel (prepare --labels)

    @property
    def coils(self) -> int:
        return 0 if self.kspace is None else int(self.kspace.shape[1])


def check_prepared(folder: str | Path) -> dict:
    """The manifest of a prepared folder; a one-line error when ``folder`` is not one."""
    folder = Path(folder)
    manifest_path = folder / "manifest.json"
    if not manifest_path.is_file():
        raise DaganError(f"{folder} is not a prepared dataset (no manifest.json); run 'dagan-tf prepare'")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as exc:
        raise DaganError(f"cannot read {manifest_path}: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != PREPARED_FORMAT:
        raise DaganError(f"{manifest_path} is not a '{PREPARED_FORMAT}' manifest")
    return manifest


def load_split(folder: str | Path, split: str) -> PreparedSplit:
    """Open ``split`` of a prepared directory (one-line errors for missing, empty, truncated or foreign files)."""
    folder = Path(folder)
    if split not in SPLITS:
        raise DaganError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    check_prepared(folder)
    path = folder / f"{split}_images.npy"
    images = _load_array(path)
    if images.dtype != np.float32 or images.ndim != 3 or images.shape[1] != images.shape[2]:
        raise DaganError(f"{path} holds {images.dtype} {images.shape}; a prepared split is float32 [N, S, S]")
    try:
        with open(folder / f"{split}_slices.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        subjects = np.array([r["subject"] for r in rows])
        sources = np.array([r["source"] for r in rows])
        slice_numbers = np.array([int(r["slice"]) for r in rows])
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise DaganError(f"cannot read {folder / f'{split}_slices.csv'}: {exc}") from None
    if len(rows) != len(images):
        raise DaganError(f"{folder}: {split}_slices.csv and {split}_images.npy disagree")
    if len(rows) == 0:
        raise DaganError(f"split {split!r} of {folder} is empty")
    kspace = maps = None
    if (folder / f"{split}_kspace.npy").is_file():
        kspace = _load_array(folder / f"{split}_kspace.npy")
        maps = _load_array(folder / f"{split}_maps.npy") if (folder / f"{split}_maps.npy").is_file() else None
        n, c = len(images), images.shape[1]
        if kspace.shape != (n, kspace.shape[1], c, c) or not np.iscomplexobj(kspace) or (maps is not None and (
                maps.shape[1:] != kspace.shape[1:] or maps.shape[0] not in (1, n) or not np.iscomplexobj(maps))):
            raise DaganError(f"{folder}: {split}_kspace.npy {kspace.shape} / {split}_maps.npy {maps.shape} do not "
                             f"match {split}_images.npy {images.shape} (complex [N, C, S, S] and [1 or N, C, S, S])")
    labels = None
    if (folder / f"{split}_labels.npy").is_file():
        labels = _load_array(folder / f"{split}_labels.npy")
        if labels.shape != images.shape or labels.dtype != np.uint8:
            raise DaganError(f"{folder}: {split}_labels.npy {labels.dtype} {labels.shape} does not match "
                             f"{split}_images.npy {images.shape} (uint8 [N, S, S])")
    return PreparedSplit(images, subjects, sources, slice_numbers, kspace, maps, labels)


def _load_array(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DaganError(f"cannot read {path}: {str(exc).splitlines()[0]} (truncated or not a .npy file?)") from None
