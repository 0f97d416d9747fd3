import sys

from irqbus.cli import main

sys.exit(main())
