"""The route's steps from voxels to probabilities, after the pseudo-labelling rounds (imported by the pipeline;
nothing heavy at import time).

* ``percentile`` (between-stage, runs for ``--stage all`` and ``--stage overall``): the last round's out-of-fold
  maps (``oof_maps.write_oof_maps``), then the percentile rule fitted on them (``oof_maps.fit_rule_on_oof``). A
  run whose last round has no cross-validated fold keeps the seed's hand-tuned rule (written, marked unfitted).
* ``overall``: the post-processing classifier (``overall_stage.OverallStage``), when ``overall.enabled`` and the
  out-of-fold maps come from two folds or more (else skipped with a warning: the route is the rule alone).

``finish_post`` writes the route's ``oof.csv`` and ``cv_scores.json`` (``overall_stage.write_route_scores``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from spinelab.config.fracseg import FracsegConfig, round_name
from spinelab.tasks.route import Step

__all__ = ["POST_STEPS", "finish_post", "percentile_step", "overall_stages"]

log = logging.getLogger("spinelab")


def percentile_step(cfg: FracsegConfig, run_dir: Path, context: Any, progress: bool) -> dict[str, Any]:
    """Out-of-fold maps of the last round, then the fitted rule (or the seed's, when nothing is held out)."""
    from spinelab.tasks.cervical.fracseg.oof_maps import fit_rule_on_oof, write_oof_maps
    from spinelab.tasks.cervical.fracseg.percentile import PercentileRule
    from spinelab.train.run_folder import trained_folds

    last = round_name(cfg.rounds)
    if not [f for f in trained_folds(run_dir, last) if f is not None]:
        log.warning("%s has no cross-validated fold: the percentile rule keeps the seed's hand-tuned numbers", last)
        rule = PercentileRule(info={"fitted": False, "reason": f"{last} has no out-of-fold predictions"})
        rule.save(run_dir)
        return rule.to_json()
    write_oof_maps(cfg, run_dir, progress=progress)
    return fit_rule_on_oof(cfg, run_dir)


def overall_stages(cfg: FracsegConfig, run_dir: Path, context: Any = None) -> list[Any]:
    """Stage ``overall`` (imported on use); none, with a warning, when the last round's out-of-fold maps come
    from fewer than two folds (a fold's classifier would have no held-out map to train on)."""
    import json

    from spinelab.tasks.cervical.fracseg.oof_maps import vertebrae_dir
    from spinelab.tasks.cervical.fracseg.overall_stage import OverallStage

    index = vertebrae_dir(run_dir, cfg.rounds) / "index.json"
    studies = json.loads(index.read_text()).get("studies", {}) if index.is_file() else {}
    folds = sorted({r["fold"] for r in studies.values() if r.get("status") == "ok"})
    if len(folds) < 2:
        log.warning("stage overall skipped: the out-of-fold maps of %s come from %s; train every fold "
                    "(--fold all) for the classifier", round_name(cfg.rounds),
                    f"fold {folds[0]} only" if folds else "no fold")
        return []
    return [OverallStage(cfg, run_dir)]


def finish_post(cfg: FracsegConfig, run_dir: Path, stage: str) -> None:
    """The route's out-of-fold table and CV scores, after a run that touched the rule or the classifier."""
    if stage in ("all", "overall"):
        from spinelab.tasks.cervical.fracseg.overall_stage import write_route_scores

        write_route_scores(cfg, run_dir)


#: Appended to the route's steps after the rounds.
POST_STEPS: tuple[Step, ...] = (
    Step("percentile", run=percentile_step, needed_by=("overall",)),
    Step("overall", stages=overall_stages, optional=lambda cfg: cfg.overall.enabled),
)
