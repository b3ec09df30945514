"""``python -m trainer``: the same as ``tickcast-trainer``."""

from trainer.cli import main

main()
