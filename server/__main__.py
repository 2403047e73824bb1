"""``python -m server`` is ``paypush``."""

import sys

from server.composition.cli import main

sys.exit(main())
