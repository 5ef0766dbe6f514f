"""``python -m rlhf_cli``: the same as the ``rlhf`` command."""

import sys

from .cli import main

sys.exit(main())
