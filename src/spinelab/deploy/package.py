"""``spinelab export model``: a run folder -> a self-describing model package (nnU-Net's "the results folder is
the model", with a manifest and a model card).

The package keeps the run folder's layout, cut to what inference reads, so every route's predictor (and
``spinelab segment``) loads it as it loads a run folder:

    PKG/config.yaml, format.json         the inference config (the resolved training config) and its layout version
    PKG/prior.json, targets.json         the training prior the fallback uses, the targets
    PKG/geometry.json                    lumbar: the learned side offsets of the points route
    PKG/percentile_rule.json             fracseg: the fitted percentile rule
    PKG/cv_scores.json                   the run's cross-validated scores (for the model card)
    PKG/<stage>/fold_<k>/model.pt        the state dicts of the chosen folds of each stage the predictor loads
    PKG/MODEL_CARD.md                    task, route, training data, CV scores, intended use and limits, licence
    PKG/manifest.json                    SHA-256 and size of every file, spinelab's version, the format number
    PKG/onnx/...                         after ``spinelab export onnx``: the 2D networks on onnxruntime

Which ``model.pt`` files go in is decided by the route's own predictor: it is built on the run folder with the
chosen folds and its ``model_info["weights_sha256"]`` lists exactly the weights it loaded (a frame
pre-training stage, checkpoints with optimiser state and Lightning logs stay out). Each weight file is read with
``weights_only=True`` and must be a plain state dict of tensors before it is copied byte for byte (so the
predictions' ``weights_sha256`` stay those of the run).
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from spinelab import __version__
from spinelab.deploy.manifest import MANIFEST_FILE, PACKAGE_FORMAT, PACKAGE_KIND, hash_files, is_package, list_files
from spinelab.errors import ConfigError, InputError

__all__ = ["export_model", "write_manifest", "TOP_FILES", "DEFAULT_LICENCE"]

#: The run folder's top-level files a package carries when present (what the predictors and the card read).
TOP_FILES = ("config.yaml", "format.json", "prior.json", "targets.json", "geometry.json", "percentile_rule.json",
             "cv_scores.json")
DEFAULT_LICENCE = "unspecified (set with `spinelab export model --licence`)"


def _weight_files(info: Any) -> Iterator[str]:
    """The ``.../model.pt`` keys anywhere in a ``weights_sha256`` mapping (nested for composite routes)."""
    if isinstance(info, dict):
        for key, value in info.items():
            if isinstance(key, str) and key.endswith("model.pt") and isinstance(value, str):
                yield key
            else:
                yield from _weight_files(value)


def _check_state_dict(path: Path) -> None:
    """Refuse a weight file that is not a plain state dict of tensors (optimiser or Lightning state, code)."""
    import torch

    from spinelab.train.run_folder import safe_torch_load  # no Lightning import: the run folder reader

    state = safe_torch_load(path, what="model weights")
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise InputError(path, "not a plain state dict of tensors (a Lightning checkpoint?); a package holds "
                               "model.pt weights only")


def _clear_pretrained(node: Any, where: str = "") -> list[str]:
    """Set every ``model.pretrained_path`` / ``pretrained_sha256`` of a config mapping to ``None``, in place;
    returns the dotted keys cleared."""
    cleared: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            here = f"{where}.{key}" if where else str(key)
            if key in ("pretrained_path", "pretrained_sha256") and where.endswith("model") and value is not None:
                node[key] = None
                cleared.append(here)
            else:
                cleared += _clear_pretrained(value, here)
    return cleared


def _inference_config(src: Path, dst: Path) -> list[str]:
    """Write the package's ``config.yaml``: the run's, without the ImageNet starting weights' paths (the backbone
    would load them before ``model.pt`` replaces every weight, and they are not on the machine a package goes
    to). Returns the keys cleared."""
    import yaml

    from spinelab.config.load import read_yaml
    from spinelab.io.atomic import atomic_write_text

    data = read_yaml(src)
    cleared = _clear_pretrained(data)
    if cleared:
        atomic_write_text(dst, yaml.safe_dump(data, sort_keys=False))
    return cleared


def export_model(run_dir: str | Path, out: str | Path, *, folds: list[int] | None = None,
                 licence: str | None = None, overwrite: bool = False) -> Path:
    """Write the package of ``run_dir`` into ``out``; returns ``out``.

    Args:
        run_dir: a run folder written by ``spinelab train`` (of any route).
        out: the package folder (must not exist, or be empty, unless ``overwrite``).
        folds: the folds to ship (default: those the predictor uses, every trained CV fold).
        licence: the licence of the weights, written into the model card and the manifest.
        overwrite: replace an existing folder at ``out``.

    Raises:
        InputError: not a run folder, a weight file that is not a plain state dict, or ``out`` exists.
        ConfigError: a fold that is not trained.
    """
    from spinelab.infer.ensemble import load_predictor
    from spinelab.tasks.catalog import run_route

    run_dir, out = Path(run_dir), Path(out)
    if not (run_dir / "config.yaml").is_file():
        raise InputError(run_dir, "not a run folder (no config.yaml); give a folder written by `spinelab train`")
    if is_package(run_dir):
        raise ConfigError(f"{run_dir} is already a model package; copy it instead of exporting it again")
    if out.resolve() == run_dir.resolve():
        raise ConfigError("--out must be a new folder, not the run folder")
    if out.exists() and not out.is_dir():
        raise InputError(out, "exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise InputError(out, "exists and is not empty (use --overwrite to replace it)")
        shutil.rmtree(out)
    route = run_route(run_dir)
    predictor = load_predictor(route.task, run_dir, folds=folds, device="cpu", precision="fp32", compile=False)
    info = predictor.model_info
    weights = sorted(set(_weight_files(info.get("weights_sha256", {}))))
    if not weights:
        raise InputError(run_dir, "the predictor loaded no model.pt; train the run first")
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for name in TOP_FILES:
            if (run_dir / name).is_file():
                shutil.copy2(run_dir / name, tmp / name)
        cleared = _inference_config(run_dir / "config.yaml", tmp / "config.yaml")
        for rel in weights:
            src = run_dir / rel
            _check_state_dict(src)
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, tmp / rel)
        record = {
            "task": route.task, "route": route.key, "experiment": getattr(predictor.cfg, "experiment", None),
            "source_run": str(run_dir.resolve()), "folds": info.get("folds"),
            "licence": licence or DEFAULT_LICENCE, "config_cleared": cleared,
        }
        from spinelab.deploy.model_card import write_model_card

        write_model_card(tmp, run_dir, predictor.cfg, record)
        write_manifest(tmp, record)
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.is_dir():
            out.rmdir()
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def write_manifest(package: str | Path, record: dict[str, Any], *, keep: dict[str, Any] | None = None) -> Path:
    """(Re)write ``manifest.json`` over every file now in ``package``: ``record`` (task, route, ...) plus the
    format, spinelab's version, the time and the files' SHA-256; ``keep`` carries sections of an earlier
    manifest (the ONNX and bf16 checks) over."""
    from spinelab.io.atomic import atomic_write_json

    package = Path(package)
    data = {"kind": PACKAGE_KIND, "format": PACKAGE_FORMAT, "spinelab": __version__,
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), **record, **(keep or {}),
            "files": hash_files(package, list_files(package))}
    return atomic_write_json(package / MANIFEST_FILE, json.loads(json.dumps(data, default=str)))
