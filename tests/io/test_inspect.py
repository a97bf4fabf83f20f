"""describe / render_description and the `spinelab info` command."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest
from rich.console import Console
from typer.testing import CliRunner

from spinelab.cli import app
from spinelab.errors import InputError, SeriesSelectionError
from spinelab.io.inspect import describe, render_description
from spinelab.io.nifti import write_nifti
from spinelab.io.volume import Volume
from tests.io._helpers import ct_volume, write


def test_dicom_folder(tmp_path, rng, oblique_affine):
    vol = ct_volume(rng, oblique_affine, (5, 32, 32))
    paths = write(vol, tmp_path, series_uid="1.4.4", series_description="Axial CT")
    paths[2].unlink()
    desc = describe(tmp_path)
    assert desc["kind"] == "dicom"
    assert desc["series"] == [{"uid": "1.4.4", "description": "Axial CT", "modality": "CT", "n_files": 4,
                               "transfer_syntaxes": ["1.2.840.10008.1.2.1"]}]
    sel = desc["selected"]
    assert sel["shape"] == [4, 32, 32] and sel["orientation"] == "SPL"
    assert sel["value_range"] == [float(np.delete(vol.array, 2, 0).min()), float(np.delete(vol.array, 2, 0).max())]
    assert any("missing slices" in w for w in sel["warnings"])
    console = Console(record=True, width=150)
    render_description(desc, console)
    text = console.export_text()
    assert "Axial CT" in text and "missing slices" in text and "SPL" in text


def test_several_series_and_selection(tmp_path, rng, oblique_affine):
    write(ct_volume(rng, oblique_affine, (3, 32, 32)), tmp_path, series_uid="1.1", series_description="A",
          file_names=["a1", "a2", "a3"])
    write(ct_volume(rng, oblique_affine, (2, 32, 32)), tmp_path, series_uid="1.2", series_description="B",
          file_names=["b1", "b2"])
    desc = describe(tmp_path)
    assert desc["selected"] is None and len(desc["series"]) == 2 and "--series" in desc["note"]
    assert describe(tmp_path, series="B")["selected"]["shape"] == [2, 32, 32]
    with pytest.raises(SeriesSelectionError, match="matches no series"):
        describe(tmp_path, series="C")


def test_nifti_and_bad_paths(tmp_path):
    lab = np.zeros((4, 5, 6), np.uint8)
    lab[1, 2, 3] = 7
    write_nifti(Volume(array=lab, affine=np.eye(4), is_label=True), tmp_path / "seg.nii.gz")
    desc = describe(tmp_path / "seg.nii.gz")
    assert desc["kind"] == "nifti" and desc["labels"] == [0, 7] and desc["shape"] == [4, 5, 6]
    (tmp_path / "fake.nii.gz").write_text("x")
    with pytest.raises(InputError, match="not a NIfTI file"):
        describe(tmp_path / "fake.nii.gz")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="not a DICOM file or folder of DICOM files"):
        describe(empty)
    with pytest.raises(InputError, match="is a device file, not a regular file or folder"):
        describe("/dev/zero")  # never opened: reading it would never end
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(InputError, match=r"is a named pipe \(FIFO\)"):
        describe(tmp_path / "pipe")
    with pytest.raises(InputError, match="does not exist"):
        describe(tmp_path / "missing")


def test_cli_info(tmp_path, rng, oblique_affine):
    write(ct_volume(rng, oblique_affine, (3, 32, 32)), tmp_path / "s")
    runner = CliRunner()
    res = runner.invoke(app, ["info", str(tmp_path / "s"), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["selected"]["shape"] == [3, 32, 32]
    res = runner.invoke(app, ["info", str(tmp_path / "nothing")])
    assert res.exit_code == 2 and "does not exist" in res.output


@pytest.mark.parametrize(("flags", "level"), [([], logging.INFO), (["--quiet"], logging.WARNING),
                                              (["-v"], logging.DEBUG)])
def test_cli_sets_the_spinelab_log_level(tmp_path, rng, oblique_affine, flags, level):
    write(ct_volume(rng, oblique_affine, (3, 16, 16)), tmp_path / "s", series_uid="1.4.5")
    res = CliRunner().invoke(app, [*flags, "info", str(tmp_path / "s"), "--json"])
    assert res.exit_code == 0, res.output
    logger = logging.getLogger("spinelab")
    assert logger.level == level
    assert sum(getattr(h, "_spinelab_cli", False) for h in logger.handlers) == 1  # no handler pile-up


@pytest.mark.realdata
def test_info_explains_the_axis_order_and_shows_nibabels_beside_it(realdata):
    import nibabel as nib

    path = realdata / "tptbox" / "sub-ct_label-22_ct.nii.gz"
    desc = describe(path)
    img = nib.load(path)
    assert desc["axes"] == "spinelab arrays are (slice, row, column) = nibabel (k, j, i)"
    assert desc["nibabel_shape"] == list(img.shape) and desc["shape"] == list(img.shape)[::-1]
    assert desc["nibabel_orientation"] == "".join(nib.aff2axcodes(img.affine)) == "PIR"
    assert desc["orientation"] == "RIP"
    console = Console(record=True, width=150)
    render_description(desc, console)
    text = console.export_text()
    assert "(slice, row, column) = nibabel (k, j, i)" in text and "PIR" in text and "nibabel_shape" in text


def test_single_dicom_file_is_described_like_its_folder(realdata):
    one = realdata / "pydicom_data" / "MR2_J2KR.dcm"
    desc = describe(one)
    assert desc["kind"] == "dicom" and desc["selected"]["modality"] == "MR"
    assert desc["selected"]["shape"][0] == 1  # one slice
