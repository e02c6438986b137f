"""``python -m hil.est_ca serve ...`` (the same as ``l4emu est-ca serve ...``)."""

import sys

from .cli import main

sys.exit(main(sys.argv[1:]))
