"""``python -m vmrunner``."""

from vmrunner.cli import main

main()
