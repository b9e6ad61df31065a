"""``python -m funcbp.cli ...`` is ``funcbp ...``."""

import sys

from funcbp.cli.main import main

sys.exit(main())
