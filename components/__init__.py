"""KFP components of the NAS pipeline: each a thin wrapper over one ``nasflow.steps`` function.

All components run in the one image named by ``nasflow.config.image_reference()``;
the image already carries kfp, so it is not reinstalled at run time.
"""

from components.compress import compress
from components.data_prep import data_prep
from components.register import register
from components.search import search
from components.tracking import finish_tracking, start_tracking
from components.train import train

__all__ = ["compress", "data_prep", "finish_tracking", "register", "search", "start_tracking", "train"]
