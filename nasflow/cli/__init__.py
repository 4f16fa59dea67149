"""The ``nasflow`` command line: the only part of nasflow that imports kfp or ``pipelines``."""

from nasflow.cli.main import main

__all__ = ["main"]
