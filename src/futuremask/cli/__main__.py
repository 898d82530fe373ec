"""``python -m futuremask.cli``: the ``futuremask`` command (as ``accelerate launch -m futuremask.cli`` needs)."""

import sys

from . import main

sys.exit(main())
