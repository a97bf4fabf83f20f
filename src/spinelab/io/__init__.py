"""Reading, writing and placing images: DICOM series, NIfTI files, geometry and the volume cache."""
