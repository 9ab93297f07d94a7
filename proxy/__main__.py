"""`tokencache-proxy` / `python -m proxy`: parse settings, set up logging, run under uvloop.

Exit codes: 0 after a clean shutdown, 1 when a listener cannot start, 2 for a bad configuration
(one line on stderr naming the variable; never a secret's value).
"""

from __future__ import annotations

import sys

from ._service import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
