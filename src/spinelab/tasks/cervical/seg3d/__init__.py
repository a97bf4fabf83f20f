"""The ``cervical/seg3d`` route: 3D C1-C7 segmentation (stage ``seg``), then the 1st place's per-vertebra stages."""
