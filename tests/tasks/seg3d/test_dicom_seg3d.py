"""The seg3d route hands its vertebra mask to the DICOM SEG: each SEG frame equals the mask on the slice of the
stored grid at the same position, segment by segment."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom

from spinelab.registry import VERTEBRAE


def test_the_seg_of_a_seg3d_study_is_its_mask_on_the_source_frames(tiny_seg3d_run: Path, tiny_cervical_dataset: Path,
                                                                   tmp_path: Path) -> None:
    from spinelab.infer.dicom_results import write_dicom_results
    from spinelab.tasks.cervical.seg3d.predict import Seg3dPredictor

    study = sorted((tiny_cervical_dataset / "train_images").iterdir())[0]
    result = Seg3dPredictor(tiny_seg3d_run, tta=False).predict_study(study)
    labels = result.attachments["labels"]
    assert labels.is_label and labels.shape[0] == len(list(study.iterdir()))
    files = write_dicom_results(result, study, tmp_path)
    if not np.isin(np.asarray(labels.array), range(1, 9)).any():  # the 2-epoch model found nothing: SR only
        assert [f.name for f in files] == ["sr.dcm"]
        return
    seg = pydicom.dcmread(files[0])
    names = {int(s.SegmentNumber): s.SegmentLabel for s in seg.SegmentSequence}
    assert set(names.values()) <= {*VERTEBRAE, "T1"}
    value = {n: ([*VERTEBRAE, "T1"].index(label) + 1) for n, label in names.items()}
    z_of_slice = labels.voxel_to_world(np.array([[k, 0, 0] for k in range(labels.shape[0])]))[:, 2]
    frames = seg.pixel_array.reshape(-1, seg.Rows, seg.Columns)
    for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence, strict=True):
        z = float(item.PlanePositionSequence[0].ImagePositionPatient[2])
        k = int(np.argmin(np.abs(z_of_slice - z)))
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        assert np.array_equal(frame.astype(bool), np.asarray(labels.array[k]) == value[number])
