"""Bridges to other tools: nnU-Net v2 (export of raw datasets, trained models in place of the seg stage)."""
