"""`python -m accounting` runs the consumer, like `far-mesh accounting`."""

import sys

from cli.main import main

sys.exit(main(["accounting", *sys.argv[1:]]))
