"""Built-in demo data: a real MRI volume from an installed PyPI package, no network.

The demo volume is the MNI ICBM152 2009a symmetric T1 template (197×233×189,
1 mm, uint8), the average of 152 real T1 scans, shipped inside the ``nilearn``
wheel (``pip install 'dagan-tf[demo]'``).  It is found on disk without
importing nilearn.  Licence: nilearn is BSD-3-Clause; the template is
Copyright (C) 1993–2009 Louis Collins, McConnell Brain Imaging Centre, Montreal
Neurological Institute, McGill University, distributed with permission to use,
copy, modify and distribute with this notice.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

from dagan_tf.errors import DaganError

DEMO_FILE = "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"


def demo_volume_path() -> Path:
    """Path of the demo NIfTI volume inside the installed ``nilearn`` package."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise DaganError("the demo volume comes with the 'demo' extra: pip install 'dagan-tf[demo]'")
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / DEMO_FILE
    if not path.is_file():
        raise DaganError(f"the installed nilearn has no {DEMO_FILE}; reinstall the 'demo' extra")
    return path
