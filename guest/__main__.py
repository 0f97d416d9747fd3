import sys

from guest.cli import main

sys.exit(main())
