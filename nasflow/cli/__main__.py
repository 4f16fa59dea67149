"""``python -m nasflow.cli``: the same command line as the ``nasflow`` console script."""

import sys

from nasflow.cli.main import main

sys.exit(main())
