"""A seg3d run as a model package: ``predict`` and ``segment`` give exactly the run folder's results."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from spinelab import api
from spinelab.deploy.manifest import verify_package
from spinelab.deploy.package import export_model


def test_a_seg3d_package_predicts_and_segments_as_its_run(tiny_seg3d_run: Path, tiny_cervical_dataset: Path,
                                                          tmp_path: Path) -> None:
    pkg = export_model(tiny_seg3d_run, tmp_path / "pkg")
    files = verify_package(pkg)["files"]
    assert {"seg/fold_0/model.pt", "vertebra/fold_0/model.pt", "patient/fold_0/model.pt"} <= set(files)
    assert not any(f.startswith(("crops/", "cache/", "derived/")) for f in files)  # training data stays out
    images = tiny_cervical_dataset / "test_images"
    subs = [pd.read_csv(api.predict("cervical", model=m, input=images, out=tmp_path / f"p{i}", device="cpu",
                                    precision="fp32", tta=False, progress=False)["submission"])
            for i, m in enumerate((tiny_seg3d_run, pkg))]
    pd.testing.assert_frame_equal(subs[0], subs[1])
    study = sorted(images.iterdir())[0]
    masks = []
    for i, m in enumerate((tiny_seg3d_run, pkg)):
        api.segment(study, tmp_path / f"s{i}", m, device="cpu", precision="fp32", tta=False, progress=False)
        masks.append(np.asarray(nib.load(tmp_path / f"s{i}" / "vertebrae.nii.gz").dataobj))
    assert np.array_equal(masks[0], masks[1])
