"""``python -m salfcbm.cli`` (and ``torchrun -m salfcbm.cli``): the ``salfcbm`` command."""

import sys

from salfcbm.cli import main

if __name__ == "__main__":
    sys.exit(main())
