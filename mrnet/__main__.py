"""``python -m mrnet``: the ``mrnet`` command."""

import sys

from mrnet.cli import main

sys.exit(main())
