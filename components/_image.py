"""The one image every component runs in; its tag is the package version."""

from nasflow.config import image_reference

IMAGE = image_reference()
GPU_IMAGE = image_reference(gpu=True)
