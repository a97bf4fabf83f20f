"""RSNA 2022 cervical fracture detection: slice localisation, then per-vertebra fracture classification."""
