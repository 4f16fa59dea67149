"""Every model family a search-space file can name, by its ``family`` value.

The chain families (``cnn``, ``mlp``, ``mobile_cnn``) live in ``families``, the graph family
(``cell``) in ``cell``, which builds on ``families``' pieces; this module joins them so that
neither has to import the other's users. Adding a family = its module + one entry here.
"""

from nasflow.spaces.cell import CELL
from nasflow.spaces.families import CHAIN_FAMILIES, Family

#: Every family, by ``family`` value, in the order error messages list them.
FAMILIES: dict[str, Family] = {family.name: family for family in (*CHAIN_FAMILIES, CELL)}
