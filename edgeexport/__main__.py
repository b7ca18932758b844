"""``python -m edgeexport`` runs the CLI."""

from edgeexport.cli import main

main()
