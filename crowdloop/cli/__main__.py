"""``python -m crowdloop.cli``: the same command line as ``crowdloop``."""

from crowdloop.cli import app

app()
