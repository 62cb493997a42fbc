"""``python -m service.cli`` is the ``diffmamba`` command."""

import sys

from service.cli import main

sys.exit(main())
