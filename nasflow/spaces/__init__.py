"""Search spaces: YAML files validated into a :class:`SearchSpace`, and the model families they build.

``schema`` parses and validates a space (naming the file and the field of any error) and
turns it into Keras Tuner hyperparameters; ``families`` holds one builder per chain family,
each declaring the hyperparameters it reads, ``cell`` the graph family (a DAG of operations,
NAS-Bench-201 style, with ``nas_bench_201`` mapping its cells onto that benchmark's tables),
and ``catalog`` the mapping of every family by name.
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
