"""RSNA 2024 lumbar degenerative grading: level points per series, then ROI grading with view fusion."""
