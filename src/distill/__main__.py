import sys

from distill.app.cli import main

sys.exit(main())
