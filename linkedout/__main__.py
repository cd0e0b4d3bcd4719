import sys

from linkedout.cli import main

sys.exit(main())
