"""Seeded generators that write synthetic datasets in the exact Kaggle layouts (RSNA 2022 and RSNA 2024).

``cervical`` writes the RSNA 2022 cervical-fracture CT layout and ``lumbar`` the RSNA 2024 lumbar MRI layout.
Every generator is deterministic for a seed and documents its synthetic-only extras.
"""
