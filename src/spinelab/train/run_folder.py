"""Reading a run folder: trained folds, weights and their hashes (no Lightning import: inference uses this).

Run folder layout (the API of ``spinelab predict``; nnU-Net's results folder is the model)::

    RUN_DIR/config.yaml                 resolved config (input contract: windows, sizes, slices; task and route)
    RUN_DIR/format.json                 {"format": RUN_FORMAT}: the layout version (absent: format 1, spinelab 0.1)
    RUN_DIR/folds.csv                   the folds used
    RUN_DIR/provenance.json             how the run was made (versions, command, machine, weight hashes)
    RUN_DIR/<stage>/fold_<k>/           model.pt, checkpoint_last.ckpt / checkpoint_best.ckpt (see --keep),
                                        logs/version_N/ (metrics.csv, TensorBoard), oof.csv, scores.json
    RUN_DIR/<stage>/full/               the same for a model trained on all data (no validation, so no
                                        checkpoint_best: model.pt is the last epoch)
"""

from __future__ import annotations

import json
import logging
import pickle
import re
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from spinelab.errors import ConfigError, InputError
from spinelab.io.files import file_sha256 as model_sha256  # the name the run folder records under

if TYPE_CHECKING:
    from spinelab.train.stage import Stage

#: Layout version of the run folders this spinelab writes. 1: spinelab 0.1 (no format.json; its config.yaml may
#: carry ``infer.tta_flip`` and ``infer.batch_size``); 2: format.json, ``route`` in config.yaml.
RUN_FORMAT = 2
FORMAT_FILE = "format.json"
log = logging.getLogger("spinelab")
_CONFIGS: dict[tuple[str, int, int, int], Any] = {}


def run_format(run_dir: str | Path) -> int:
    """The layout version of a run folder (1 when it has no ``format.json``).

    Raises:
        InputError: format.json is unreadable, or the folder was written by a newer spinelab.
    """
    import json

    path = Path(run_dir) / FORMAT_FILE
    if not path.is_file():
        return 1
    try:
        number = json.loads(path.read_text())["format"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise InputError(path, f"not a spinelab run format file ({type(err).__name__})") from None
    if not isinstance(number, int) or number < 1:
        raise InputError(path, f"format must be a positive integer, got {number!r}")
    if number > RUN_FORMAT:
        raise InputError(path, f"run folder format {number} is newer than this spinelab reads ({RUN_FORMAT}); "
                               "upgrade spinelab")
    return number


def write_run_format(run_dir: str | Path) -> Path:
    """Write ``format.json`` (``spinelab train`` does, next to config.yaml)."""
    from spinelab.io.atomic import atomic_write_json

    return atomic_write_json(Path(run_dir) / FORMAT_FILE, {"format": RUN_FORMAT})


def _migrate(data: dict[str, Any], fmt: int) -> dict[str, Any]:
    """A config mapping of an older run format in today's keys."""
    if fmt < 2 and isinstance(data.get("infer"), dict):
        infer = dict(data["infer"])
        if "tta_flip" in infer:  # renamed to tta
            infer.setdefault("tta", infer.pop("tta_flip"))
        infer.pop("batch_size", None)  # never used at inference
        data = {**data, "infer": infer}
    # ``train.validate`` (Dec 2026, shadowed pydantic's BaseModel.validate) is now ``train.validation``
    for name, section in list(data.items()):
        train = section.get("train") if isinstance(section, dict) else None
        if isinstance(train, dict) and "validate" in train:
            train = {k if k != "validate" else "validation": v for k, v in train.items()}
            data = {**data, name: {**section, "train": train}}
    return data


def read_run_config(run_dir: str | Path) -> Any:
    """The validated ``config.yaml`` of a run folder written by ``spinelab train`` (older formats migrated).

    Read once per file version: later calls (the predictor, the runtime options) get a copy of the first.

    Raises:
        ConfigError: no config.yaml, or it is not a valid config.
    """
    from spinelab.config.load import apply_overrides, config_class, read_yaml
    from spinelab.errors import ConfigError

    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{path}: not found; is {run_dir} a run folder written by `spinelab train`?")
    st = path.stat()
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size, run_format(run_dir))
    if key not in _CONFIGS:
        data = read_yaml(path)
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
        data = _migrate(data, key[3])
        from pydantic import ValidationError

        from spinelab.config.load import _format_validation

        task = str(data.get("task", ""))
        route = data.get("route")
        try:
            _CONFIGS[key] = config_class(task, None if route is None else str(route)).model_validate(
                apply_overrides(data, []))
        except ValidationError as err:
            raise ConfigError(f"{path}: {_format_validation(err)}") from None
    return _CONFIGS[key].model_copy(deep=True)

__all__ = [
    "RUN_FORMAT",
    "run_format",
    "write_run_format",
    "read_run_config",
    "fold_dir",
    "trained_folds",
    "parse_fold_spec",
    "select_folds",
    "safe_torch_load",
    "load_trained_backbone",
    "load_stage_models",
    "model_sha256",
    "read_training_log",
    "read_prior",
    "fold_weight_files",
]


def read_prior(run_dir: str | Path, default: Any) -> Any:
    """The training prior a failed study falls back to (``RUN_DIR/prior.json``), ``default`` without one."""
    path = Path(run_dir) / "prior.json"
    return json.loads(path.read_text()) if path.is_file() else default


def fold_weight_files(run_dir: str | Path, folds: dict[str, list[int | None]]) -> list[Path]:
    """The ``model.pt`` of every ``{stage: folds}`` entry, stage by stage (what a predictor records the hashes of)."""
    return [fold_dir(run_dir, stage, f) / "model.pt" for stage, fs in folds.items() for f in fs]


def fold_dir(run_dir: str | Path, stage: str, fold: int | None) -> Path:
    """``RUN_DIR/<stage>/fold_<k>`` or ``RUN_DIR/<stage>/full``."""
    return Path(run_dir) / stage / ("full" if fold is None else f"fold_{fold}")


def trained_folds(run_dir: str | Path, stage: str) -> list[int | None]:
    """Folds of ``stage`` that have weights (``None`` stands for the full-data model)."""
    root = Path(run_dir) / stage
    found: list[int | None] = []
    if not root.is_dir():
        return found
    for d in sorted(root.iterdir()):
        if not (d / "model.pt").is_file():
            continue
        if d.name == "full":
            found.append(None)
        elif d.name.startswith("fold_") and d.name.removeprefix("fold_").isdigit():
            found.append(int(d.name.removeprefix("fold_")))
    return found


def parse_fold_spec(spec: str, k: int) -> list[int | None]:
    """``"all"`` -> every fold in turn, ``"full"`` -> the all-data model (``None``), ``"0,2"`` -> those folds.

    Raises:
        ConfigError: a fold that is not a number, or one outside ``0 .. k-1`` (checked before any work).
    """
    spec = str(spec).strip()
    if spec == "all":
        return list(range(k))
    if spec == "full":
        return [None]
    parts = [p.strip() for p in spec.split(",")]
    if not all(p.isdigit() for p in parts):
        raise ConfigError(f"--fold must be 'all', 'full' or fold numbers like '0,1', got {spec!r}")
    folds = [int(p) for p in parts]
    outside = [f for f in folds if f >= k]
    if outside:
        raise ConfigError(f"--fold {spec}: fold(s) {outside} out of range: the dataset has {k} folds (0..{k - 1})")
    return list(dict.fromkeys(folds))


def select_folds(run_dir: str | Path, stage: str, folds: list[int | None] | None) -> list[int | None]:
    """Folds of ``stage`` to ensemble: the requested ones (all must be trained), else every trained CV fold,
    else the full-data model."""
    available = trained_folds(run_dir, stage)
    if folds is None:
        return [f for f in available if f is not None] or available
    missing = [f for f in folds if f not in available]
    if missing:
        raise InputError(Path(run_dir) / stage, f"folds {missing} not trained (available: {available})")
    return list(folds)


def safe_torch_load(path: str | Path, *, what: str = "checkpoint") -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU; any failure is one ``InputError`` naming the file.

    ``weights_only=True`` refuses pickles that would build arbitrary objects (a planted checkpoint cannot run
    code); a truncated or garbage file is refused the same way.
    """
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        if found:  # a reference to a class or function: what a planted pickle needs to run code
            raise InputError(path, f"{what} refused: it references {found.group(1)}, not only tensors and plain "
                                   "data (spinelab loads with weights_only=True)") from None
        detail = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)
        reason = detail.group(1).strip() if detail else (text.strip().splitlines() or [type(err).__name__])[0]
        raise InputError(path, f"{what} cannot be read (truncated or not a torch file): {reason[:200]}") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(path, f"{what} cannot be read (truncated or not a torch file): {first[:200]}") from None


def load_stage_models(stage: Stage, folds: list[int | None] | None = None, *, device: str = "cpu"
                      ) -> list[torch.nn.Module]:
    """Build and load the models of ``stage`` for the given folds (default: every trained fold)."""
    folds = trained_folds(stage.run_dir, stage.name) if folds is None else folds
    if not folds:
        raise InputError(stage.run_dir / stage.name, "no trained model (model.pt) found; run `spinelab train`")
    models = []
    for f in folds:
        path = fold_dir(stage.run_dir, stage.name, f) / "model.pt"
        if not path.is_file():
            raise InputError(path, "model weights not found")
        state = safe_torch_load(path, what="model weights")
        if not isinstance(state, dict):
            raise InputError(path, f"model weights must be a state dict, got {type(state).__name__}")
        model = stage.build_model()
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            first = str(err).strip().splitlines()[0]
            raise InputError(path, f"weights do not fit the model of config.yaml: {first[:200]}") from None
        models.append(model.eval().to(device))
    return models


def read_training_log(fold_folder: str | Path) -> Any:
    """All CSV logs of one fold (every resumed part, in order) as one pandas frame."""
    import pandas as pd

    parts = sorted(Path(fold_folder).glob("logs/version_*/metrics.csv"),
                   key=lambda p: int(p.parent.name.removeprefix("version_")))
    return pd.concat([pd.read_csv(p) for p in parts], ignore_index=True) if parts else pd.DataFrame()


def load_trained_backbone(backbone: torch.nn.Module, run_dir: str | Path, stage: str, prefix: str,
                          fold: int | None) -> Path | None:
    """Load the CNN (or any other part, by ``prefix``) of an earlier stage's ``fold`` model (else of its model
    trained on all data) into ``backbone``, when the architecture and input channels match.

    The same fold keeps the held-out studies unseen: no stage of fold k trained on fold k.

    Args:
        backbone: the module to fill.
        run_dir: the run folder.
        stage: the earlier stage's folder name (``"stage1"``, ``"frames"``, ``"vertebra"``).
        prefix: the backbone's key prefix in that stage's ``model.pt``.
        fold: the fold being trained.

    Returns:
        The ``model.pt`` loaded from, or ``None`` when there is none or it does not fit.
    """
    for f in dict.fromkeys([fold, None]):
        path = fold_dir(run_dir, stage, f) / "model.pt"
        if not path.is_file():
            continue
        state = safe_torch_load(path, what="starting weights")
        state = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
        own = backbone.state_dict()
        if state.keys() != own.keys() or any(state[k].shape != own[k].shape for k in own):
            log.info("%s: backbone or input channels differ; not used as starting weights", path)
            return None
        backbone.load_state_dict(state)
        log.info("CNN starts from %s", path)
        return path
    return None
