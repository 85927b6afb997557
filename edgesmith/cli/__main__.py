import sys

from edgesmith.cli import main

sys.exit(main())
