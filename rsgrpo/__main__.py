import sys

from rsgrpo.cli import main

sys.exit(main())
