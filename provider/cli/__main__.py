"""``python -m provider.cli``: the same as the ``nats-kvcache`` console script."""

import sys

from provider.cli.main import main

sys.exit(main())
