"""``python -m mtlrepro`` runs the command line."""

import sys

from mtlrepro.cli import main

sys.exit(main())
