"""Two spinelab nodes on loopback: a study C-STOREd to the node is predicted after its quiet period, and its SEG
and SR are C-STOREd to the configured node; what is not an image (our own SEG/SR coming back) is not predicted."""

from __future__ import annotations

import time
from pathlib import Path

import pydicom
import pytest

from spinelab.errors import ConfigError
from spinelab.pacs.config import PacsConfig, RemoteNode
from spinelab.pacs.node import PacsNode
from spinelab.pacs.scu import PacsError, echo, store_files
from tests.pacs.conftest import Collector


def _wait(condition: object, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.1)
    return False


def test_a_stored_study_comes_back_as_seg_and_sr(pacs_run_and_studies: tuple[Path, list[Path]],
                                                 collector: Collector, tmp_path: Path) -> None:
    run, studies = pacs_run_and_studies
    study = studies[0]
    cfg = PacsConfig(port=0, model=[run], work_dir=tmp_path / "work", quiet_seconds=0.5, timeout_seconds=30,
                     remote=RemoteNode(ae_title="PACS", host="127.0.0.1", port=collector.port))
    with PacsNode(cfg) as node:
        me = RemoteNode(ae_title=cfg.ae_title, host="127.0.0.1", port=node.port)
        assert echo(me)
        files = sorted(study.iterdir())
        assert store_files(files, me, ae_title="MODALITY") == len(files)
        received = collector.wait_for(2, timeout=60)
        uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        assert _wait(lambda: uid in node.results, 10)
        # our own results sent back to the node are acknowledged, never predicted
        store_files(node.results[uid], me, ae_title="PACS")
        time.sleep(1.0)
        assert list(node.results) == [uid]
    assert sorted(d.Modality for d in received) == ["SEG", "SR"]
    assert {str(d.StudyInstanceUID) for d in received} == {uid}
    seg = next(d for d in received if d.Modality == "SEG")
    series = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series
    result = (tmp_path / "work" / "results" / uid / "result.json").read_text()
    assert '"dicom_files"' in result and "seg.dcm" in result
    assert len(list((tmp_path / "work" / "incoming" / uid).rglob("*.dcm"))) == len(files)


def test_a_study_that_cannot_be_predicted_leaves_the_node_running(
        pacs_run_and_studies: tuple[Path, list[Path]], tmp_path: Path) -> None:
    run, studies = pacs_run_and_studies
    cfg = PacsConfig(port=0, model=[run], work_dir=tmp_path / "work", quiet_seconds=0.3)
    with PacsNode(cfg) as node:
        me = RemoteNode(ae_title=cfg.ae_title, port=node.port)
        one = sorted(studies[1].iterdir())[:1]  # a single slice: refused by the input rules
        store_files(one, me)
        uid = str(pydicom.dcmread(one[0], stop_before_pixels=True).StudyInstanceUID)
        assert _wait(lambda: uid in node.results, 30)
        assert node.results[uid] == []
        assert echo(me)
    assert "not predicted" in (tmp_path / "work" / "results" / uid / "result.json").read_text()


def test_pull_needs_a_remote_node_and_a_uid(tmp_path: Path) -> None:
    node = PacsNode(PacsConfig(port=0, work_dir=tmp_path))
    with pytest.raises(ConfigError, match="pulling needs a remote node"):
        node.pull("1.2.3")
    node = PacsNode(PacsConfig(port=0, work_dir=tmp_path, remote=RemoteNode(ae_title="X", port=9)))
    with pytest.raises(ConfigError, match="not a StudyInstanceUID"):
        node.pull("../etc")


def test_an_unreachable_node_is_one_pacs_error(tmp_path: Path) -> None:
    from tests.pacs.conftest import free_port

    with pytest.raises(PacsError, match="unreachable"):
        store_files(_one_file(tmp_path), RemoteNode(ae_title="X", port=free_port()), timeout=5)


def _one_file(tmp_path: Path) -> list[Path]:
    from tests.io._dicom_series import tiny_ct_series

    return sorted(tiny_ct_series(tmp_path).iterdir())[:1]


def test_a_node_without_a_model_says_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="give the node a model"):
        PacsNode(PacsConfig(work_dir=tmp_path)).predictor  # noqa: B018
