"""A sequence run as a model package: ``predict`` gives exactly the run folder's submission."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from spinelab import api
from spinelab.deploy.manifest import verify_package
from spinelab.deploy.package import export_model


def test_a_sequence_package_predicts_as_its_run(tiny_sequence_run: Path, tiny_cervical_dataset: Path,
                                                tmp_path: Path) -> None:
    pkg = export_model(tiny_sequence_run, tmp_path / "pkg")
    files = verify_package(pkg)["files"]
    assert {"slices_s0/fold_0/model.pt", "study_s1/fold_0/model.pt"} <= set(files)
    assert not any(f.startswith(("embeddings/", "slice_labels/", "derived/")) for f in files)  # training only
    images = tiny_cervical_dataset / "test_images"
    subs = [pd.read_csv(api.predict("cervical", model=m, input=images, out=tmp_path / f"p{i}", device="cpu",
                                    precision="fp32", tta=False, progress=False)["submission"])
            for i, m in enumerate((tiny_sequence_run, pkg))]
    pd.testing.assert_frame_equal(subs[0], subs[1])
