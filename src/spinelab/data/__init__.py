"""Datasets on disk: layouts, labels, folds, synthetic generators and image preparation."""
