"""What every cervical route's predictor shares: reading a study, the per-study function, the fallback.

A route's predictor subclasses ``CervicalStudyPredictor`` and provides ``predict_volume(volume, study_id)``,
``prior`` (the training prevalence per target) and ``model_info``; reading a study (a DICOM folder or file, or
a NIfTI file of CT in HU) and the result for a study that could not be processed are the same for all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from spinelab.infer.result import SCHEMA_VERSION, StudyResult
from spinelab.infer.studies import read_study_volume, study_id_of_file
from spinelab.io.volume import Volume
from spinelab.registry import CERVICAL_TARGETS

__all__ = ["CervicalStudyPredictor"]


class CervicalStudyPredictor:
    """Base of the cervical predictors (``slices``, ``seg3d``, ``fracseg``, ``sequence``)."""

    prior: dict[str, float]

    @property
    def model_info(self) -> dict[str, Any]:
        raise NotImplementedError

    def predict_volume(self, volume: Volume, study_id: str | None = None) -> StudyResult:
        raise NotImplementedError

    def predict_study(self, study: str | Path, study_id: str | None = None, *,
                      series: str | None = None) -> StudyResult:
        """Read a study (a DICOM folder, a DICOM file or a NIfTI file of CT in HU) and predict it.

        Args:
            series: SeriesInstanceUID or SeriesDescription when a folder holds several series.
        """
        study = Path(study)
        sid = study_id or (study_id_of_file(study) if study.is_file() else study.name)
        return self.predict_volume(read_study_volume(study, series=series), sid)

    def for_dataset(self, input: Path, split: str, *, series: str | None = None) -> Any:
        """The per-study function of ``predict_dataset`` (``series`` picks the series in every study)."""
        return lambda sid, path: self.predict_study(path, sid, series=series)

    def fallback(self, study_id: str, error: str) -> StudyResult:
        """A valid prediction for a study that could not be processed: the training prevalence."""
        return StudyResult(schema_version=SCHEMA_VERSION, study=study_id,
                           probabilities={t: float(self.prior[t]) for t in CERVICAL_TARGETS}, status="failed",
                           error=error, warnings=[f"prediction failed, prior used: {error}"], model=self.model_info)
