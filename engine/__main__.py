"""`python -m segadapt ...` is the `segadapt` command (torchrun uses this form)."""

import sys

from segadapt.cli import main

sys.exit(main())
