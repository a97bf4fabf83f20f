"""Export a Kaggle-layout RSNA 2022 dataset as an nnU-Net v2 raw dataset (``spinelab export nnunet``).

Writes ``RAW_DIR/DatasetNNN_Name/``:

* ``imagesTr/<StudyInstanceUID>_0000.nii.gz``: the CT in HU on its own stored DICOM grid (``write_nifti``);
* ``labelsTr/<StudyInstanceUID>.nii.gz``: on the same grid; ``vertebrae``: 1..7 = C1..C7 from the RSNA
  segmentations (``derived/masks`` of the seg3d set-up when present, else placed by world coordinates from
  ``segmentations/``); ``fractures``: 1 = fracture, any voxel of ``derived/fracture_masks/<UID>.nii.gz``
  (the box pseudo-masks of ``spinelab labels cervical --fracture-masks``), put on the CT grid by world
  coordinates; where the folder's ``index.json`` exists, only the studies it marks ``ok`` (a study with a
  fractured vertebra without voxels would teach that fracture as background);
* ``dataset.json`` (``channel_names {"0": "CT"}``, ``labels``, ``numTraining``, ``file_ending``);
* ``splits_final.json``: spinelab's folds (``folds.csv``, else made as ``spinelab folds`` makes them), one
  ``{"train", "val"}`` per fold over the exported cases;
* ``spinelab_plans.json``: a configuration ``3d_fullres_spinelab`` inheriting nnU-Net's ``3d_fullres`` with
  the seed's spacing and patch (``install_plans`` merges it into the preprocessed ``nnUNetPlans.json`` and
  copies ``splits_final.json`` beside it, where nnU-Net reads them);
* ``spinelab_export.json``: the case -> study map, what was left out and why, the commands.

The whole dataset is written into a hidden sibling folder and renamed into place at the end, so an
interrupted export never leaves a half-written dataset. Nothing here imports ``nnunetv2``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from spinelab.errors import ConfigError, InputError, SpinelabError
from spinelab.io.atomic import atomic_write_json

__all__ = ["export_nnunet", "install_plans", "NnunetExport", "TASKS", "SEED_PLANS", "CONFIGURATION",
           "nnunet_commands", "dataset_folder_name"]

log = logging.getLogger("spinelab")

Task = Literal["vertebrae", "fractures"]
TASKS: tuple[str, ...] = ("vertebrae", "fractures")
#: nnU-Net label names -> values for each task (nnU-Net needs consecutive values from 0).
LABELS: dict[str, dict[str, int]] = {
    "vertebrae": {"background": 0, **{f"C{k}": k for k in range(1, 8)}},
    "fractures": {"background": 0, "fracture": 1},
}
#: Default dataset ids: the 7th place's nnU-Net task numbers (Task_101 vertebrae, Task_201 fractures).
DEFAULT_ID = {"vertebrae": 101, "fractures": 201}
DEFAULT_NAME = {"vertebrae": "CervicalVertebrae", "fractures": "CervicalFractures"}
#: The seed's grids (``../shared/reference/seed-systems.md`` 4.3), (z, y, x) as nnU-Net orders them:
#: vertebrae 1.5 mm isotropic with 160x128x128 patches; fractures 0.8/0.4/0.4 mm with 96x192x192 patches.
SEED_PLANS: dict[str, dict[str, list[float] | list[int]]] = {
    "vertebrae": {"spacing": [1.5, 1.5, 1.5], "patch_size": [160, 128, 128]},
    "fractures": {"spacing": [0.8, 0.4, 0.4], "patch_size": [96, 192, 192]},
}
#: The nnU-Net configuration the plans override adds.
CONFIGURATION = "3d_fullres_spinelab"
FILE_ENDING = ".nii.gz"
EXPORT_SCHEMA_VERSION = 1
_NAME = re.compile(r"^[A-Za-z0-9_]+$")


@dataclass
class NnunetExport:
    """What ``export_nnunet`` wrote.

    Args:
        folder: ``RAW_DIR/DatasetNNN_Name``.
        dataset_id: ``NNN``.
        cases: case identifier -> StudyInstanceUID (the same string: UIDs are valid nnU-Net identifiers).
        skipped: ``{study, reason}`` of each study left out.
        folds: number of folds in ``splits_final.json``.
        commands: the nnU-Net commands to run next, in order.
    """

    folder: Path
    dataset_id: int
    cases: dict[str, str]
    skipped: list[dict[str, str]] = field(default_factory=list)
    folds: int = 0
    commands: list[str] = field(default_factory=list)


def dataset_folder_name(dataset_id: int, name: str) -> str:
    """``Dataset101_Name``: nnU-Net's three-digit id and a name of letters, digits and underscores.

    Raises:
        ConfigError: an id outside 1..999 or a name nnU-Net cannot use.
    """
    if not 1 <= int(dataset_id) <= 999:
        raise ConfigError(f"--dataset-id must be 1..999 (nnU-Net's three digits), got {dataset_id}")
    if not _NAME.match(name):
        raise ConfigError(f"--name must hold only letters, digits and underscores, got {name!r}")
    return f"Dataset{int(dataset_id):03d}_{name}"


def nnunet_commands(folder: Path, dataset_id: int, folds: int) -> list[str]:
    """The nnU-Net v2 commands that plan, train and predict an exported dataset, in order."""
    raw = folder.parent
    pre = f"$nnUNet_preprocessed/{folder.name}"
    fold_list = " ".join(str(f) for f in range(max(folds, 1)))
    return [
        f"export nnUNet_raw={raw} nnUNet_preprocessed={raw.parent / 'nnUNet_preprocessed'} "
        f"nnUNet_results={raw.parent / 'nnUNet_results'}",
        f"nnUNetv2_plan_and_preprocess -d {dataset_id} -c 3d_fullres --verify_dataset_integrity",
        f"spinelab export nnunet-plans {folder} --preprocessed {pre}",
        f"nnUNetv2_preprocess -d {dataset_id} -c {CONFIGURATION}",
        *(f"nnUNetv2_train {dataset_id} {CONFIGURATION} {f}" for f in range(max(folds, 1))),
        f"nnUNetv2_predict -i INPUT_FOLDER -o OUTPUT_FOLDER -d {dataset_id} -c {CONFIGURATION} -f {fold_list}",
    ]


def _check_out(out: Path, folder_name: str, dataset_id: int, overwrite: bool) -> Path:
    """The dataset folder to write; refuse another dataset with the same id (nnU-Net would not know which)."""
    if out.exists() and not out.is_dir():
        raise InputError(out, "exists and is not a folder")
    prefix = f"Dataset{dataset_id:03d}_"
    if out.is_dir():
        clash = [p.name for p in out.iterdir() if p.name.startswith(prefix) and p.name != folder_name]
        if clash:
            raise InputError(out / clash[0], f"another nnU-Net dataset has id {dataset_id}; choose another "
                                             "--dataset-id or remove it")
    target = out / folder_name
    if target.exists() and not overwrite:
        raise InputError(target, "exists; pass --overwrite to replace it")
    return target


def _label_sources(dataset_dir: Path, task: str, derived_dir: Path | None) -> dict[str, tuple[str, Path]]:
    """``{uid: (kind, path)}``: where each study's labels come from."""
    derived = derived_dir or dataset_dir / "derived"
    if task == "fractures":
        folder = derived / "fracture_masks"
        if not folder.is_dir():
            raise InputError(folder, "no fracture pseudo-masks; write them first with "
                                     "`spinelab labels cervical DATASET_DIR --fracture-masks`")
        masks = {p.name[: -len(".nii.gz")]: ("mask", p) for p in sorted(folder.glob("*.nii.gz"))}
        index = read_json(folder / "index.json").get("studies", {}) if (folder / "index.json").is_file() else {}
        # Only studies whose every fractured vertebra got voxels: elsewhere a fracture would train as background.
        return {u: m for u, m in masks.items() if not index or index.get(u, {}).get("status") == "ok"}
    from spinelab.data.cervical_labels import find_segmentations

    sources: dict[str, tuple[str, Path]] = {u: ("segmentation", p) for u, p in find_segmentations(dataset_dir).items()}
    masks = derived / "masks"
    for uid in sources:
        if (masks / f"{uid}.nii.gz").is_file():  # the seg3d set-up's copy, already on the CT grid
            sources[uid] = ("mask", masks / f"{uid}.nii.gz")
    if not sources:
        raise InputError(dataset_dir / "segmentations", "no segmentation to export (segmentations/<UID>.nii)")
    return sources


def _labels_on_ct(task: str, kind: str, path: Path, ct: Any) -> np.ndarray:
    """The study's nnU-Net labels (uint8) on the CT's grid."""
    from spinelab.io.geometry import resample_to
    from spinelab.io.nifti import read_nifti
    from spinelab.tasks.cervical.seg3d.schemes import remap_labels

    if kind == "segmentation":
        from spinelab.data.cervical_labels import _seg_on_ct

        on_ct, _ = _seg_on_ct(path, ct)
    else:
        on_ct = resample_to(read_nifti(path, is_label=True), ct, order=0)
    arr = np.asarray(on_ct.array)
    if task == "fractures":
        return (arr > 0).astype(np.uint8)
    return remap_labels(arr, "rsna", n_classes=8)


def _ct_array(ct: Any) -> np.ndarray:
    """HU as int16 when every value is a whole number in range (a quarter of float32's disk), else float32."""
    arr = np.asarray(ct.array)
    if arr.dtype.kind in "iu" and arr.min() >= -32768 and arr.max() <= 32767:
        return arr.astype(np.int16, copy=False)
    return arr.astype(np.float32, copy=False)


def _splits(cases: list[str], folds: Any) -> list[dict[str, list[str]]]:
    """One ``{"train", "val"}`` per fold that holds an exported case."""
    fold_of = {c: int(folds[c]) for c in cases}
    return [{"train": sorted(c for c in cases if fold_of[c] != f), "val": sorted(c for c in cases if fold_of[c] == f)}
            for f in sorted(set(fold_of.values()))]


def export_nnunet(dataset_dir: str | Path, out: str | Path, *, task: str = "vertebrae", dataset_id: int | None = None,
                  name: str | None = None, spacing: list[float] | None = None, patch_size: list[int] | None = None,
                  folds_file: str | Path | None = None, k: int = 5, derived_dir: str | Path | None = None,
                  cache_dir: str | Path | None = None, overwrite: bool = False,
                  progress: bool = True) -> NnunetExport:
    """Write an nnU-Net v2 raw dataset from the training studies of a Kaggle-layout RSNA 2022 dataset.

    Args:
        dataset_dir: the dataset (``train_images/``, ``train.csv``, ``segmentations/`` or ``derived/``).
        out: nnU-Net's raw folder (``$nnUNet_raw``); the dataset goes into ``out/DatasetNNN_Name``.
        task: ``vertebrae`` (C1-C7 from the RSNA segmentations) or ``fractures`` (the box pseudo-masks).
        dataset_id, name: nnU-Net's id and name (defaults: 101 / 201 and ``CervicalVertebrae`` /
            ``CervicalFractures``).
        spacing, patch_size: the plans override's ``(z, y, x)`` (defaults: the seed's, ``SEED_PLANS``).
        folds_file: a folds CSV (default ``DATASET_DIR/folds.csv``, else ``k`` folds made as ``spinelab folds``
            makes them, seed 42).
        derived_dir: where ``masks/`` and ``fracture_masks/`` live (default ``DATASET_DIR/derived``).
        cache_dir: a volume cache to read the CTs from (else the DICOM series are decoded).
        overwrite: replace an existing ``DatasetNNN_Name``.

    Raises:
        ConfigError: an unknown task, a bad id or name, a bad spacing or patch.
        InputError: a missing dataset or label source, no study left to export, an id already taken.
    """
    if task not in TASKS:
        raise ConfigError(f"--task must be one of {', '.join(TASKS)}; got {task!r}")
    dataset_dir, out = Path(dataset_dir), Path(out)
    if not (dataset_dir / "train_images").is_dir():
        raise InputError(dataset_dir, "not an RSNA 2022 dataset folder (no train_images/)")
    dataset_id = DEFAULT_ID[task] if dataset_id is None else int(dataset_id)
    folder_name = dataset_folder_name(dataset_id, name or DEFAULT_NAME[task])
    plans = {"spacing": [float(s) for s in (spacing or SEED_PLANS[task]["spacing"])],
             "patch_size": [int(p) for p in (patch_size or SEED_PLANS[task]["patch_size"])]}
    if len(plans["spacing"]) != 3 or min(plans["spacing"]) <= 0:
        raise ConfigError(f"--spacing needs three positive numbers (z, y, x mm), got {plans['spacing']}")
    if len(plans["patch_size"]) != 3 or min(plans["patch_size"]) < 1:
        raise ConfigError(f"--patch needs three positive voxel counts (z, y, x), got {plans['patch_size']}")
    target = _check_out(out, folder_name, dataset_id, overwrite)
    sources = _label_sources(dataset_dir, task, Path(derived_dir) if derived_dir else None)
    folds = _read_or_make_folds(dataset_dir, folds_file, k)
    todo = {u: s for u, s in sources.items() if (dataset_dir / "train_images" / u).is_dir()}
    skipped = [{"study": u, "reason": "no train_images folder"} for u in sources if u not in todo]
    skipped += [{"study": u, "reason": "not in the folds"} for u in todo if u not in folds.index]
    todo = {u: s for u, s in todo.items() if u in folds.index}

    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{folder_name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "imagesTr").mkdir(parents=True)
    (tmp / "labelsTr").mkdir()
    try:
        cases = _write_cases(tmp, task, todo, dataset_dir, cache_dir, skipped, progress)
        if not cases:
            raise InputError(dataset_dir, f"no study could be exported for task {task} "
                                          f"({len(skipped)} left out: {skipped[0]['reason'] if skipped else '-'})")
        splits = _splits(sorted(cases), folds)
        commands = nnunet_commands(target, dataset_id, len(splits))
        atomic_write_json(tmp / "dataset.json", {
            "channel_names": {"0": "CT"}, "labels": LABELS[task], "numTraining": len(cases),
            "file_ending": FILE_ENDING, "name": folder_name,
            "description": f"spinelab export of {dataset_dir.name}: cervical {task}",
            "reference": "RSNA 2022 Cervical Spine Fracture Detection (not for redistribution)"})
        atomic_write_json(tmp / "splits_final.json", splits)
        atomic_write_json(tmp / "spinelab_plans.json", {
            "configurations": {CONFIGURATION: {"inherits_from": "3d_fullres", **plans}}})
        atomic_write_json(tmp / "spinelab_export.json", {
            "schema_version": EXPORT_SCHEMA_VERSION, "task": task, "dataset_dir": str(dataset_dir),
            "cases": cases, "skipped": skipped, "plans": plans, "commands": commands})
        _replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for s in skipped:
        log.warning("study %s left out of the nnU-Net export: %s", s["study"], s["reason"])
    return NnunetExport(folder=target, dataset_id=dataset_id, cases=cases, skipped=skipped, folds=len(splits),
                        commands=commands)


def _read_or_make_folds(dataset_dir: Path, folds_file: str | Path | None, k: int) -> Any:
    from spinelab.data.folds import make_dataset_folds, read_folds

    if folds_file is not None:
        return read_folds(folds_file)
    if (dataset_dir / "folds.csv").is_file():
        return read_folds(dataset_dir)
    return make_dataset_folds(dataset_dir, k=k, task="cervical")


def _write_cases(tmp: Path, task: str, todo: dict[str, tuple[str, Path]], dataset_dir: Path,
                 cache_dir: str | Path | None, skipped: list[dict[str, str]], progress: bool) -> dict[str, str]:
    """Each study's image and labels; a study that cannot be read is left out with its reason."""
    from spinelab.infer.batch import progress_bar
    from spinelab.io.cache import load_series
    from spinelab.io.nifti import write_nifti

    cases: dict[str, str] = {}
    with progress_bar() as bar:
        job = bar.add_task(f"nnU-Net export ({task})", total=len(todo), visible=progress)
        for uid, (kind, path) in todo.items():
            try:
                ct = load_series(f"train_images/{uid}", dataset_dir=dataset_dir, cache_dir=cache_dir)
                labels = _labels_on_ct(task, kind, path, ct)
                if task == "vertebrae" and not labels.any():
                    raise InputError(path, "no C1-C7 voxel on the CT grid")
                write_nifti(ct.with_array(_ct_array(ct), slice_ids=None),
                            tmp / "imagesTr" / f"{uid}_0000{FILE_ENDING}")
                write_nifti(ct.with_array(labels, is_label=True, slice_ids=None),
                            tmp / "labelsTr" / f"{uid}{FILE_ENDING}")
                cases[uid] = uid
            except SpinelabError as err:
                skipped.append({"study": uid, "reason": str(err)})
            bar.advance(job)
    return cases


def _replace(tmp: Path, target: Path) -> None:
    """Rename the finished dataset into place (an older one is moved aside first, then removed)."""
    old = target.with_name(f".{target.name}.old")
    if target.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


def install_plans(dataset_folder: str | Path, preprocessed: str | Path) -> Path:
    """Merge an export's ``spinelab_plans.json`` into ``PREPROCESSED/nnUNetPlans.json`` (written by
    ``nnUNetv2_plan_and_preprocess``) and copy ``splits_final.json`` beside it (nnU-Net reads the splits from
    the preprocessed folder). Returns the plans file.

    Raises:
        InputError: the export or the plans file is missing or not JSON.
    """
    dataset_folder, preprocessed = Path(dataset_folder), Path(preprocessed)
    override_path = dataset_folder / "spinelab_plans.json"
    plans_path = preprocessed / "nnUNetPlans.json"
    override, plans = read_json(override_path), read_json(plans_path)
    if "3d_fullres" not in plans.get("configurations", {}):
        raise InputError(plans_path, "has no 3d_fullres configuration (run nnUNetv2_plan_and_preprocess -c 3d_fullres)")
    plans["configurations"].update(override["configurations"])
    atomic_write_json(plans_path, plans)
    splits = dataset_folder / "splits_final.json"
    if splits.is_file():
        shutil.copyfile(splits, preprocessed / "splits_final.json")
    return plans_path


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from disk; missing or unreadable -> one ``InputError`` naming the file."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(path, "not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(path, f"cannot read as JSON: {err}") from None
