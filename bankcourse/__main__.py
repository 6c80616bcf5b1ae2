"""``python -m bankcourse``: see :mod:`bankcourse.cli`."""

import sys

from bankcourse.cli import main

sys.exit(main())
