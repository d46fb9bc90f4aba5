"""`python -m dynconv` = the `dynconv` command (for environments where the script is not on PATH).

Imports only `dynconv.cli`.
"""

import sys

from dynconv.cli import main

sys.exit(main())
