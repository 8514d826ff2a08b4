"""``python -m unetflow``: the same CLI as the ``unetflow`` script (used by the Snakemake rules,
which run it from conda environments that carry the dependencies but not the package)."""

import sys

from unetflow.cli import main

sys.exit(main())
