"""``spinelab info`` prints every series' full UID (the table may cut them to the terminal's width)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from spinelab.cli import app
from spinelab.io.dicom_write import write_series
from spinelab.io.volume import Volume


def test_info_prints_full_series_uids(tmp_path: Path) -> None:
    uid = "1.2.826.0.1.3680043.8.498.1234567890123456789012345678901234567"  # 64 characters
    vol = Volume(np.zeros((2, 8, 8), np.int16), np.eye(4))
    write_series(vol, tmp_path, series_uid=uid)
    write_series(vol, tmp_path, file_names=["b1.dcm", "b2.dcm"])
    result = CliRunner().invoke(app, ["info", str(tmp_path)], env={"COLUMNS": "60"})
    assert result.exit_code == 0, result.output
    assert f"series uid (for --series): {uid}" in result.output
