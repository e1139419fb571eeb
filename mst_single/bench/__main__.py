import sys

from mst_single.bench.cli import main

sys.exit(main())
