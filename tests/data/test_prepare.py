"""Before training: inputs checked first, and nothing written into the dataset (defaults under the run folder)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from spinelab.config.load import load_config
from spinelab.data.prepare import check_dataset, fold_count, make_writable_folder, prepare_dataset
from spinelab.errors import InputError
from spinelab.registry import CERVICAL_TARGETS


def _dataset(folder: Path, ids: list[str] | None = None) -> Path:
    ids = ids or [f"1.2.{i}" for i in range(6)]
    labels = np.random.default_rng(0).integers(0, 2, size=(len(ids), len(CERVICAL_TARGETS)))
    frame = pd.DataFrame(labels, columns=list(CERVICAL_TARGETS))
    frame.insert(0, "StudyInstanceUID", ids)
    (folder / "train_images").mkdir(parents=True)
    frame.to_csv(folder / "train.csv", index=False)
    return folder


def _cfg(data: Path, *extra: str):
    return load_config("cervical", [], [f"data.dataset_dir={data}", "data.folds=3", *extra])


def test_check_dataset_names_the_first_missing_input(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="dataset folder does not exist"):
        check_dataset(_cfg(tmp_path / "nope"))
    (tmp_path / "d").mkdir()
    with pytest.raises(InputError, match="train.csv not found"):
        check_dataset(_cfg(tmp_path / "d"))
    (tmp_path / "d" / "train.csv").write_text("StudyInstanceUID\n1\n")
    with pytest.raises(InputError, match="train_images: image folder not found"):
        check_dataset(_cfg(tmp_path / "d"))
    bad = _dataset(tmp_path / "bad", ids=["1.2.3", "../x"])
    with pytest.raises(InputError, match=r"train\.csv: line 3: StudyInstanceUID '\.\./x'"):
        check_dataset(_cfg(bad))
    with pytest.raises(InputError, match="data.folds_file not found"):
        check_dataset(_cfg(_dataset(tmp_path / "ok"), f"data.folds_file={tmp_path}/none.csv"))


def test_fold_count_follows_the_folds_file_in_use(tmp_path: Path) -> None:
    data = _dataset(tmp_path / "data")
    assert fold_count(_cfg(data)) == 3
    pd.DataFrame({"StudyInstanceUID": ["1.2.0", "1.2.1"], "fold": [0, 6]}).to_csv(data / "folds.csv", index=False)
    assert fold_count(_cfg(data)) == 7


@pytest.fixture
def built(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Record the cache builds instead of decoding (the datasets here hold no images)."""
    calls: list[Path] = []
    monkeypatch.setattr("spinelab.io.cache.build_cache", lambda dataset, out, **kw: calls.append(Path(out)))
    return calls


def test_defaults_go_under_the_run_folder(tmp_path: Path, built: list[Path]) -> None:
    data = _dataset(tmp_path / "data")
    cfg = prepare_dataset(_cfg(data), tmp_path / "run", progress=False)
    assert cfg.data.cache_dir == tmp_path / "run" / "cache" and cfg.data.derived_dir == tmp_path / "run" / "derived"
    assert cfg.data.folds_file == tmp_path / "run" / "folds.csv" and cfg.data.folds_file.is_file()
    assert sorted(p.name for p in data.iterdir()) == ["train.csv", "train_images"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "run"] and built == [tmp_path / "run" / "cache"]


def test_existing_files_beside_the_dataset_are_used(tmp_path: Path, built: list[Path]) -> None:
    data = _dataset(tmp_path / "data")
    (tmp_path / "data_cache").mkdir()
    (data / "derived").mkdir()
    (data / "derived" / "slice_labels.csv").write_text("StudyInstanceUID\n")
    pd.DataFrame({"StudyInstanceUID": ["1.2.0"], "fold": [0]}).to_csv(data / "folds.csv", index=False)
    cfg = prepare_dataset(_cfg(data), tmp_path / "run", progress=False)
    assert cfg.data.cache_dir == tmp_path / "data_cache" and cfg.data.derived_dir == data / "derived"
    assert cfg.data.folds_file == data / "folds.csv" and not (tmp_path / "run" / "folds.csv").exists()


def test_unwritable_run_folder_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="exists and is not a folder"):
        make_writable_folder(tmp_path / "file")
    with pytest.raises(InputError, match="file system error") as err:
        make_writable_folder(tmp_path / "file" / "run")
    assert "\n" not in str(err.value)


def test_read_only_cache_is_used_without_a_build(tmp_path: Path, built: list[Path],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    data = _dataset(tmp_path / "data")
    cache = tmp_path / "shipped_cache"
    cache.mkdir()
    real_access = os.access
    # Root passes every mode check, so the read-only mount is stood in for by access() itself.
    monkeypatch.setattr("spinelab.data.prepare.os.access",
                        lambda p, mode: False if Path(p) == cache else real_access(p, mode))
    cfg = prepare_dataset(_cfg(data, f"data.cache_dir={cache}"), tmp_path / "run", progress=False)
    assert cfg.data.cache_dir == cache and built == []
