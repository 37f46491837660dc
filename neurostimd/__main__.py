import sys

from neurostimd.commands.cli import main

sys.exit(main())
