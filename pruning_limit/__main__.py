"""``python -m pruning_limit``: the command line, also under ``torchrun -m pruning_limit``."""

import sys

from .cli import main

sys.exit(main())
