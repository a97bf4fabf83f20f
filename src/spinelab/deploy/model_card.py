"""``MODEL_CARD.md`` of a model package: what the model does, what it was trained on, how well it scored in
cross-validation, what it is for and not for, and under which licence (Hugging Face's model-card headings,
filled from the run folder so nothing is typed by hand)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["write_model_card", "model_card", "INTENDED_USE", "LIMITS"]

CARD_FILE = "MODEL_CARD.md"

INTENDED_USE = {
    "cervical": "Research and triage support: the probability of a fracture in each of C1-C7 and in the patient "
                "from an axial CT of the cervical spine (RSNA 2022 Cervical Spine Fracture Detection). A result "
                "is a second look for a radiologist, never a diagnosis.",
    "lumbar": "Research support: Normal/Mild, Moderate or Severe for 5 degenerative conditions at L1/L2-L5/S1 from "
              "a lumbar MRI study with Sagittal T1, Sagittal T2/STIR and Axial T2 series (RSNA 2024). A result is "
              "a second look for a radiologist, never a diagnosis.",
}
LIMITS = [
    "Not a medical device: not cleared or approved for clinical use by any regulator.",
    "Scores are cross-validated on the training dataset named above; performance on other scanners, sites, "
    "protocols or populations is unknown until measured there.",
    "Studies outside the input rules (spinelab's README, 'Checking the input') are refused or flagged; a refused or "
    "failed study gets the training prior, not a prediction.",
    "Probabilities are as calibrated as the training data's prevalence; check calibration before using a "
    "threshold.",
]


def _scores(run_dir: Path) -> list[str]:
    """Markdown lines of the run's cross-validated scores (``cv_scores.json``, else each fold's scores)."""
    lines = []
    path = run_dir / "cv_scores.json"
    if path.is_file():
        data = json.loads(path.read_text())
        n = data.get("studies", "?")
        lines.append(f"Out-of-fold over {n} stud{'y' if n == 1 else 'ies'} (`cv_scores.json`):")
        lines.append("")
        lines += [f"- {k}: {v:.4f}" for k, v in data.items()
                  if isinstance(v, int | float) and k not in ("schema_version", "studies")]
        for name, sub in data.get("types", {}).items():
            lines += [f"- {name} {k}: {v:.4f}" for k, v in sub.items() if isinstance(v, int | float)]
    folds = sorted(run_dir.glob("*/fold_*/scores.json"))
    if folds:
        lines += ["", "Per stage and fold (validation, `scores.json`):", ""]
        for p in folds:
            data = json.loads(p.read_text())
            nums = {k: v for k, v in data.items() if isinstance(v, float) and k != "seconds"}
            text = ", ".join(f"{k} {v:.4f}" for k, v in nums.items()) or "no validation score"
            lines.append(f"- {p.parent.parent.name}/{p.parent.name}: {text} ({data.get('epochs', '?')} epochs)")
    return lines or ["No cross-validated scores in the run folder (trained with `--fold full`?)."]


def _training_data(run_dir: Path, cfg: Any) -> list[str]:
    """Markdown lines naming the training dataset, its size and the folds."""
    data = getattr(cfg, "data", None)
    lines = [f"- dataset: `{getattr(data, 'dataset_dir', '?')}`"]
    folds = run_dir / "folds.csv"
    if folds.is_file():
        import pandas as pd

        table = pd.read_csv(folds)
        lines.append(f"- {len(table)} studies in {table['fold'].nunique()} folds (`folds.csv`)")
    prov = run_dir / "provenance.json"
    if prov.is_file():
        p = json.loads(prov.read_text())
        pk = p.get("packages", {})
        lines.append(f"- trained with spinelab {p.get('spinelab_version', '?')} (commit {p.get('git_commit', '?')}), "
                     f"torch {pk.get('torch', '?')}, timm {pk.get('timm', '?')}, on {p.get('cpu', '?')}"
                     f" / {p.get('accelerator', '?')}")
    return lines


def model_card(run_dir: str | Path, cfg: Any, record: dict[str, Any]) -> str:
    """The card's Markdown text for the run ``run_dir`` (config ``cfg``) and the manifest fields ``record``."""
    run_dir = Path(run_dir)
    task = record["task"]
    folds = record.get("folds")
    lines = [
        f"# Model card: {record.get('experiment') or run_dir.name} ({record['route']})", "",
        "## Model", "",
        f"- task: {task}", f"- route: `{record['route']}`", f"- experiment: {record.get('experiment')}",
        f"- folds shipped: `{json.dumps(folds)}`", f"- exported from: `{record.get('source_run')}`", "",
        "## Training data", "", *_training_data(run_dir, cfg), "",
        "## Cross-validated scores", "", *_scores(run_dir), "",
        "## Intended use", "", INTENDED_USE.get(task, "Research use."), "",
        "## Limits", "", *[f"- {x}" for x in LIMITS], "",
        "## Licence", "", f"{record.get('licence')}", "",
        "## Use", "",
        f"    spinelab predict {task} --model PKG -i STUDY -o OUT   # verified against manifest.json first",
        "    spinelab export onnx PKG                              # optional: the 2D networks on onnxruntime",
        *(["    spinelab segment --model PKG -i STUDY -o OUT          # the vertebra masks"]
          if record["route"] in ("cervical/seg3d", "cervical/fracseg") else []), "",
    ]
    return "\n".join(lines)


def write_model_card(package: str | Path, run_dir: str | Path, cfg: Any, record: dict[str, Any]) -> Path:
    """Write ``PKG/MODEL_CARD.md``."""
    from spinelab.io.atomic import atomic_write_text

    return atomic_write_text(Path(package) / CARD_FILE, model_card(run_dir, cfg, record))
