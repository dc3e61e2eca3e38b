"""`python -m esmkernels ...` (also `torchrun --nproc-per-node N -m esmkernels embed ...`)."""

import sys

from esmkernels.cli import main

if __name__ == "__main__":
    sys.exit(main())
