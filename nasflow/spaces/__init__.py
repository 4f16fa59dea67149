"""Search spaces: YAML files validated into a :class:`SearchSpace`, and the model families they build.

``schema`` parses and validates a space (naming the file and the field of any error) and
turns it into Keras Tuner hyperparameters; ``families`` holds one builder per family,
each declaring the hyperparameters it reads.
"""

from nasflow.spaces.schema import (
    DEFAULT_SPACES,
    SearchSpace,
    SearchSpaceHyperModel,
    describe_architecture,
    load_search_space,
    parse_search_space,
    resolve_search_space,
    search_space_size,
)

__all__ = [
    "DEFAULT_SPACES",
    "SearchSpace",
    "SearchSpaceHyperModel",
    "describe_architecture",
    "load_search_space",
    "parse_search_space",
    "resolve_search_space",
    "search_space_size",
]
