"""``python -m pipeline.cli``: the same as the ``mobile-model`` command."""

from pipeline.cli import main

main()
