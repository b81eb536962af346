"""``python -m fastrnn``: check fastrnn against the reference and time both.

See :mod:`fastrnn._cli` for the commands and options, or run ``python -m fastrnn --help``.
"""

import sys

from ._cli import main

if __name__ == "__main__":
    sys.exit(main())
