"""The PACS node's settings: AE titles, hosts, ports, the model, the work folder (a small YAML or options).

Example ``pacs.yaml``::

    ae_title: SPINELAB          # this node
    host: 127.0.0.1
    port: 11112
    task: cervical
    model: [runs/cervical/demo]
    work_dir: pacs_work         # received studies (incoming/) and results (results/)
    quiet_seconds: 10           # a study is complete after this long without a new instance
    remote: {ae_title: ORTHANC, host: 127.0.0.1, port: 4242}   # where SEG and SR go, and C-MOVE asks
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from spinelab.errors import ConfigError

__all__ = ["RemoteNode", "PacsConfig", "load_pacs_config"]


def _ae_title(value: str) -> str:
    """AE titles are 1-16 characters of the default repertoire without backslash (PS3.5 AE)."""
    value = value.strip()
    if not 1 <= len(value) <= 16 or "\\" in value or not value.isascii():
        raise ValueError(f"an AE title has 1-16 ASCII characters, got {value!r}")
    return value


class RemoteNode(BaseModel):
    """Another DICOM node (a PACS, Orthanc)."""

    model_config = ConfigDict(extra="forbid")
    ae_title: str
    host: str = "127.0.0.1"
    port: int = Field(104, ge=1, le=65535)

    @field_validator("ae_title")
    @classmethod
    def _check_ae(cls, value: str) -> str:
        return _ae_title(value)


class PacsConfig(BaseModel):
    """Everything ``spinelab pacs`` needs; defaults are visible here."""

    model_config = ConfigDict(extra="forbid")
    ae_title: str = "SPINELAB"
    host: str = "127.0.0.1"
    port: int = Field(11112, ge=0, le=65535)
    task: str = "cervical"
    model: list[Path] = Field(default_factory=list)
    work_dir: Path = Path("pacs_work")
    quiet_seconds: float = Field(10.0, gt=0)
    remote: RemoteNode | None = None
    device: str | None = None
    timeout_seconds: float = Field(120.0, gt=0)

    @field_validator("ae_title")
    @classmethod
    def _check_ae(cls, value: str) -> str:
        return _ae_title(value)


def load_pacs_config(path: str | Path | None = None, **overrides: Any) -> PacsConfig:
    """The YAML at ``path`` (optional) with ``overrides`` (options given on the command line, ``None`` = unset).

    Raises:
        ConfigError: an unreadable file, an unknown key or a bad value (named).
    """
    import yaml

    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise ConfigError(f"{path}: cannot read the PACS config ({err})") from err
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: a PACS config is a mapping of settings")
    remote = {k: overrides.pop(k) for k in ("remote_ae_title", "remote_host", "remote_port") if k in overrides}
    data.update({k: v for k, v in overrides.items() if v is not None})
    given = {k[len("remote_"):]: v for k, v in remote.items() if v is not None}
    if given:
        data["remote"] = {**(data.get("remote") or {}), **given}
    try:
        return PacsConfig.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"{path or 'pacs options'}: {where}: {first['msg']}") from None
