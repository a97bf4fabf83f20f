"""spinelab."""
