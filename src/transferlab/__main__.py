"""``python -m transferlab``: the command line, also as torchrun's module (``torchrun -m transferlab extract``)."""

import sys

from transferlab.cli import main

sys.exit(main())
