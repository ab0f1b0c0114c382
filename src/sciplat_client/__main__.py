"""python -m sciplat_client: the sciplat-client command."""

import sys

from sciplat_client.cli import main

sys.exit(main())
