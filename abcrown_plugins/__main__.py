import sys

from abcrown_plugins.cli import main

sys.exit(main())
