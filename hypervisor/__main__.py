import sys

from hypervisor.cli import main

sys.exit(main())
