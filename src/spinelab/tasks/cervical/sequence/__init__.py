"""The 3rd-place cervical route (``cervical/sequence``): slice-level labels, a windowed slice model, a study head."""
