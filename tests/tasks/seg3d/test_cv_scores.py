"""CV scores of the seg3d classifiers: type 1's vertebra rows become studies, the ensemble of the two types."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from spinelab.registry import CERVICAL_TARGETS, VERTEBRAE
from spinelab.tasks.cervical.seg3d.cv_scores import classifier_oof


def _write(run, labels: pd.DataFrame) -> None:
    rows = [{"StudyInstanceUID": uid, "vertebra": v, "probability": 0.1 + 0.1 * i, "target": labels.loc[uid, v]}
            for uid in labels.index for i, v in enumerate(VERTEBRAE) if not (uid == "b" and v == "C7")]
    (run / "vertebra" / "fold_0").mkdir(parents=True)
    pd.DataFrame(rows).to_csv(run / "vertebra" / "fold_0" / "oof.csv", index=False)
    t2 = pd.DataFrame(0.5, index=labels.index, columns=list(CERVICAL_TARGETS)).reset_index()
    (run / "patient" / "fold_0").mkdir(parents=True)
    t2.to_csv(run / "patient" / "fold_0" / "oof.csv", index=False)


def test_types_and_their_ensemble_per_study(tmp_path) -> None:
    labels = pd.DataFrame(np.eye(2, 8), index=pd.Index(["a", "b"], name="StudyInstanceUID"),
                          columns=list(CERVICAL_TARGETS))
    _write(tmp_path, labels)
    prior = dict.fromkeys(CERVICAL_TARGETS, 0.05)
    oof = classifier_oof(tmp_path, labels, prior, weight=0.25)
    assert set(oof) == {"type1", "type2", "ensemble"}
    t1 = oof["type1"].set_index("StudyInstanceUID")
    assert t1.loc["b", "C7"] == pytest.approx(0.05)  # no crops for C7 of b: the prior
    expected = 1 - np.prod(1 - np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]))
    assert t1.loc["a", "patient_overall"] == pytest.approx(expected)
    ens = oof["ensemble"].set_index("StudyInstanceUID")
    assert ens.loc["a", "C3"] == pytest.approx(0.75 * 0.3 + 0.25 * 0.5)
    assert ens.loc["a", "true_C1"] == 1.0 and ens.loc["b", "true_C2"] == 1.0
