import sys

from vpnctl.cli import main

sys.exit(main())
