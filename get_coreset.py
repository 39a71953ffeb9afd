"""Select coresets from a produce run's prediction history (dynamic uncertainty by default,
and the baselines): the command's usage and behaviour are documented in its
implementation, dynunc/scoring/cli.py, which the installed package also offers as the
`get_coreset` console script.

    python get_coreset.py --input OUTPUT --dataset_file_list LIST --fraction 0.75 \
        --window 10 --output CORESET
"""
import sys

from dynunc.scoring.cli import *  # noqa: F401,F403 (this file's names, for scripts and tests that import them)
from dynunc.scoring.cli import main

if __name__ == "__main__":
    sys.exit(main())
