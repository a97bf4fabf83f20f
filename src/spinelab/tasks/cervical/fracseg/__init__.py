"""The ``cervical/fracseg`` route: the 7th place's fracture segmentation on the vertebra crop."""
