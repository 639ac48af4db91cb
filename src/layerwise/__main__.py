"""`python -m layerwise` (and `torchrun -m layerwise`) runs the CLI."""

import sys

from layerwise.cli import main

sys.exit(main())
