"""Inference machinery shared by both pipelines: runtime options, fold/TTA ensembling, run-folder loading."""
