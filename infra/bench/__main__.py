"""`python -m infra.bench` (make bench)."""

import sys

from infra.bench.harness import main

sys.exit(main())
