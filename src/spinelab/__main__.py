"""``python -m spinelab`` runs the command line."""

from spinelab.cli import main

main()
