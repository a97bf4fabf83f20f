"""spinelab: RSNA cervical-fracture (CT) and lumbar-degeneration (MRI) pipelines in one tested toolkit."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "read_series",
    "read_nifti",
    "write_nifti",
    "resample_to",
    "Volume",
    "create_model",
    "list_models",
    "predict_cervical",
    "predict_lumbar",
    "segment",
]


def __getattr__(name: str) -> Any:
    # Lazy re-exports: `import spinelab` stays cheap (no torch) until a heavy name is used.
    if name in ("read_series",):
        from spinelab.io.dicom import read_series

        return read_series
    if name in ("read_nifti", "write_nifti"):
        from spinelab.io import nifti

        return getattr(nifti, name)
    if name == "resample_to":
        from spinelab.io.geometry import resample_to

        return resample_to
    if name == "Volume":
        from spinelab.io.volume import Volume

        return Volume
    if name in ("create_model", "list_models"):
        from spinelab import models

        return getattr(models, name)
    if name == "predict_cervical":
        from spinelab.tasks.cervical.predict import predict_cervical

        return predict_cervical
    if name == "predict_lumbar":
        from spinelab.tasks.lumbar.predict import predict_lumbar

        return predict_lumbar
    if name == "segment":
        from spinelab.api import segment

        return segment
    raise AttributeError(f"module 'spinelab' has no attribute {name!r}")
