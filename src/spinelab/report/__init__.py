"""Reports: per-study pictures, HTML indexes, training curves and calibration tables."""
