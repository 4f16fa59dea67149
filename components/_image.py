"""The images components run in, chosen when the pipeline is compiled; tags are the package version.

Every step runs in :data:`IMAGE` (tensorflow-cpu) except the GPU branch's training task,
which runs in :data:`GPU_IMAGE` (tensorflow with CUDA). Both follow ``NASFLOW_IMAGE_REGISTRY``.
"""

from nasflow.config import image_reference

IMAGE = image_reference()
GPU_IMAGE = image_reference(gpu=True)
