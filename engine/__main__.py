"""`python -m engine ...` is the `segadapt` command (torchrun uses this form)."""

import sys

from engine.cli import main

sys.exit(main())
