"""Tests of the 3rd-place route cervical/sequence."""
