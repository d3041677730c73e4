"""``python -m polyfocal ...`` (and ``torchrun -m polyfocal ...``): the command line."""

import sys

from .cli import main

sys.exit(main())
