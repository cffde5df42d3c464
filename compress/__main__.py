"""``python -m compress``."""

from compress.cli.main import main

main()
