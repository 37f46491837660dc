import sys

from neurostimd.cli import main

sys.exit(main())
