"""The PACS round trip against a real Orthanc on loopback: store a synthetic study into Orthanc, have spinelab
pull it (C-MOVE), predict it and store SEG and SR back; then ask Orthanc (REST) for the two new instances and
check they reference the study and its series."""

from __future__ import annotations

import time
from pathlib import Path

import pydicom

from spinelab.pacs.config import PacsConfig, RemoteNode
from spinelab.pacs.node import PacsNode
from spinelab.pacs.scu import store_files
from tests.pacs.conftest import free_port
from tests.pacs.orthanc import ORTHANC_AE, running_orthanc


def test_pull_predict_and_store_back_into_orthanc(pacs_run_and_studies: tuple[Path, list[Path]],
                                                  tmp_path: Path) -> None:
    run, studies = pacs_run_and_studies
    study = studies[1]  # JPEG Lossless slices: Orthanc stores and moves them as they are
    files = sorted(study.iterdir())
    header = pydicom.dcmread(files[0], stop_before_pixels=True)
    study_uid, series_uid = str(header.StudyInstanceUID), str(header.SeriesInstanceUID)
    port = free_port()
    start = time.monotonic()
    with running_orthanc(tmp_path / "orthanc", spinelab_ae="SPINELAB", spinelab_port=port) as orthanc:
        remote = RemoteNode(ae_title=ORTHANC_AE, host="127.0.0.1", port=orthanc.dicom_port)
        assert store_files(files, remote, ae_title="MODALITY") == len(files)
        cfg = PacsConfig(ae_title="SPINELAB", port=port, model=[run], work_dir=tmp_path / "work", remote=remote,
                         timeout_seconds=30)
        node = PacsNode(cfg)
        try:
            sent = node.pull(study_uid)
        finally:
            node.stop()
        assert [f.name for f in sent] == ["seg.dcm", "sr.dcm"]
        assert len(list((tmp_path / "work" / "incoming" / study_uid).rglob("*.dcm"))) == len(files)

        found = orthanc.post("/tools/find", {"Level": "Study", "Query": {"StudyInstanceUID": study_uid}})
        assert len(found) == 1
        series = orthanc.get(f"/studies/{found[0]}/series")
        by_modality = {s["MainDicomTags"]["Modality"]: s for s in series}
        assert sorted(by_modality) == ["CT", "SEG", "SR"]
        assert len(by_modality["CT"]["Instances"]) == len(files)
        seg_id, = by_modality["SEG"]["Instances"]
        sr_id, = by_modality["SR"]["Instances"]
        seg = orthanc.get(f"/instances/{seg_id}/tags?simplify")
        sr = orthanc.get(f"/instances/{sr_id}/tags?simplify")
    assert seg["StudyInstanceUID"] == sr["StudyInstanceUID"] == study_uid
    assert seg["ReferencedSeriesSequence"][0]["SeriesInstanceUID"] == series_uid
    assert seg["SOPClassUID"] == "1.2.840.10008.5.1.4.1.1.66.4"
    assert sr["SOPClassUID"] == "1.2.840.10008.5.1.4.1.1.88.34"
    evidence = {i["ReferencedSOPInstanceUID"] for s in sr["CurrentRequestedProcedureEvidenceSequence"]
                for r in s["ReferencedSeriesSequence"] for i in r["ReferencedSOPSequence"]}
    assert seg["SOPInstanceUID"] in evidence
    assert time.monotonic() - start < 90
