"""Job records and the unpacking of uploads: zip slip, links, size limits, the study folder's name."""

from __future__ import annotations

import os
import stat
import zipfile
from pathlib import Path

import pytest

from spinelab.serve.jobs import Job, JobStore, UploadRefusedError, result_files, unpack_study_zip


def _zip(path: Path, members: dict[str, bytes], *, compression: int = zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


@pytest.mark.parametrize("name", ["../evil.dcm", "study/../../evil.dcm", "/etc/evil.dcm", "C:/evil.dcm",
                                  "..\\evil.dcm"])
def test_members_pointing_outside_the_folder_are_refused(tmp_path: Path, name: str) -> None:
    archive = _zip(tmp_path / "slip.zip", {"study/1.dcm": b"x", name: b"owned"})
    with pytest.raises(UploadRefusedError, match="outside the study folder") as err:
        unpack_study_zip(archive, tmp_path / "input", name="slip.zip", max_bytes=10**6)
    assert err.value.status == 400
    assert not (tmp_path / "evil.dcm").exists() and not list(tmp_path.rglob("evil.dcm"))


def test_a_symbolic_link_member_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "link.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        info = zipfile.ZipInfo("study/link")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(UploadRefusedError, match="symbolic link"):
        unpack_study_zip(archive, tmp_path / "input", name="link.zip", max_bytes=10**6)


def test_size_and_count_limits_answer_413(tmp_path: Path) -> None:
    bomb = _zip(tmp_path / "bomb.zip", {"s/a.dcm": bytes(3_000_000)}, compression=zipfile.ZIP_DEFLATED)
    assert bomb.stat().st_size < 50_000
    with pytest.raises(UploadRefusedError, match="unpacks to 3.0 MB") as err:
        unpack_study_zip(bomb, tmp_path / "input", name="bomb.zip", max_bytes=2_000_000)
    assert err.value.status == 413
    many = _zip(tmp_path / "many.zip", {f"s/{i}.dcm": b"x" for i in range(5)})
    with pytest.raises(UploadRefusedError, match="holds 5 files, more than 4"):
        unpack_study_zip(many, tmp_path / "input2", name="many.zip", max_bytes=10**6, max_files=4)


def test_a_header_that_understates_the_size_is_caught_while_writing(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "liar.zip", {"s/a.dcm": bytes(300_000)}, compression=zipfile.ZIP_DEFLATED)
    data = bytearray(archive.read_bytes())
    central = data.rindex(b"PK\x01\x02")
    data[central + 24:central + 28] = (10).to_bytes(4, "little")  # the central directory claims 10 bytes
    archive.write_bytes(bytes(data))
    with pytest.raises(UploadRefusedError) as err:
        unpack_study_zip(archive, tmp_path / "input", name="liar.zip", max_bytes=100_000)
    assert err.value.status in (400, 413)  # refused either by the size count or by the zip's own size check


def test_not_a_zip_and_an_empty_zip_are_refused(tmp_path: Path) -> None:
    (tmp_path / "x.zip").write_bytes(b"plain text")
    with pytest.raises(UploadRefusedError, match="not a zip file"):
        unpack_study_zip(tmp_path / "x.zip", tmp_path / "input", name="x.zip", max_bytes=10**6)
    empty = _zip(tmp_path / "empty.zip", {})
    with pytest.raises(UploadRefusedError, match="holds no file"):
        unpack_study_zip(empty, tmp_path / "input", name="empty.zip", max_bytes=10**6)


def test_one_top_folder_unpacks_as_itself_and_loose_files_go_under_the_upload_name(tmp_path: Path) -> None:
    top = _zip(tmp_path / "a.zip", {"1.2.3/1.dcm": b"a", "1.2.3/2.dcm": b"b"})
    assert unpack_study_zip(top, tmp_path / "in1", name="a.zip", max_bytes=10**6) == tmp_path / "in1"
    assert sorted(p.name for p in (tmp_path / "in1" / "1.2.3").iterdir()) == ["1.dcm", "2.dcm"]
    loose = _zip(tmp_path / "b.zip", {"1.dcm": b"a", "sub/2.dcm": b"b"})
    unpack_study_zip(loose, tmp_path / "in2", name="my study (2).zip", max_bytes=10**6)
    assert (tmp_path / "in2" / "my_study__2_" / "sub" / "2.dcm").read_bytes() == b"b"


def test_store_lists_updates_and_deletes(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs")
    ids = []
    for _ in range(2):
        job_id, folder = store.new_folder()
        store.add(Job(id=job_id, model="m", folder=folder, input=folder / "input"))
        ids.append(job_id)
    assert store.queued_before(store.get(ids[1])) == 1 and store.queued_before(store.get(ids[0])) == 0
    store.update(ids[0], state="running")
    assert store.get(ids[0]).started is not None
    assert store.delete(ids[0]) and store.get(ids[0]) is None  # deleted while running: hidden at once,
    assert (tmp_path / "jobs" / ids[0]).is_dir()                  # its folder kept until the worker is done
    assert store.update(ids[0], state="done") is None
    assert store.finish_deleted(ids[0]) and not (tmp_path / "jobs" / ids[0]).exists()
    assert store.delete(ids[1]) and not (tmp_path / "jobs" / ids[1]).exists() and not store.delete(ids[1])
    assert store.list() == []


def test_result_files_lists_the_output_folder_with_links(tmp_path: Path) -> None:
    job = Job(id="abc", model="m", folder=tmp_path, input=tmp_path / "input")
    assert result_files(job) == []
    (job.out / "studies").mkdir(parents=True)
    (job.out / "studies" / "s.json").write_text("{}")
    (job.out / "seg.dcm").write_bytes(b"DICM")
    (job.out / ".hidden").write_text("x")
    files = {f["name"]: f for f in result_files(job)}
    assert set(files) == {"studies/s.json", "seg.dcm"}
    assert files["seg.dcm"]["media_type"] == "application/dicom" and files["seg.dcm"]["bytes"] == 4
    assert files["studies/s.json"]["url"] == "/v1/jobs/abc/files/studies/s.json"
    assert job.public()["links"] == {"self": "/v1/jobs/abc"} and os.sep not in job.id
