"""nasflow: neural architecture search as a production MLOps workflow."""

__version__ = "0.1.0"
