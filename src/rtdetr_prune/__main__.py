import sys

from rtdetr_prune.cli import main

sys.exit(main())
