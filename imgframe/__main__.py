"""``python -m imgframe`` is the ``imgframe`` command."""

import sys

from imgframe.cli import main

sys.exit(main())
