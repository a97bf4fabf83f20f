"""``StudyResult``: what any route returns for one study; ``studies/<id>.json`` is its serialisation.

The typed fields are the ones every consumer reads (the submission, the report, the manifest); what a route
localised rides along under its own keys (cervical: ``vertebra_ranges``, ``crop_box``; lumbar: ``points``,
``axial_level_slices``; a 3D route: boxes or mask paths), so today's JSON keys stay as they are.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

__all__ = ["StudyResult", "SCHEMA_VERSION"]

#: Version of the study JSON, manifest.json and evaluation.json layouts; raised when a key changes meaning.
SCHEMA_VERSION = 1


class StudyResult(BaseModel):
    """One study's prediction.

    Exactly one of ``probabilities`` (binary targets, e.g. cervical fractures) and ``grades`` (target ->
    grade -> probability, e.g. lumbar severity) is set. ``status``: ``ok``, ``warning`` (predicted, with
    ``warnings``), ``refused`` (an input rule failed: ``reasons``; the prior is given) or ``failed`` (an error:
    ``error``; the prior is given).
    """

    model_config = ConfigDict(extra="allow")

    schema_version: int
    study: str | None
    status: Literal["ok", "warning", "refused", "failed"] = "ok"
    probabilities: dict[str, float] | None = None
    grades: dict[str, dict[str, float]] | None = None
    warnings: list[str] = Field(default_factory=list)
    reasons: list[str] | None = None
    error: str | None = None
    input: dict[str, Any] | None = None
    model: dict[str, Any] | None = None
    seconds: float | None = None
    #: what a route made for this study beyond the JSON, never serialised (seg3d: ``labels``, the vertebra label
    #: map on the stored grid, and ``series_uid``), for writers of other formats such as the DICOM SEG
    _attachments: dict[str, Any] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _one_kind_of_output(self) -> StudyResult:
        if (self.probabilities is None) == (self.grades is None):
            raise ValueError("a study result carries exactly one of probabilities and grades")
        return self

    @property
    def attachments(self) -> dict[str, Any]:
        """See ``_attachments``; empty after a JSON round trip."""
        return self._attachments

    def to_json(self) -> dict[str, Any]:
        """The per-study JSON: the fields that were given (never ``null`` placeholders) and the route's own keys."""
        return self.model_dump(exclude_unset=True)
