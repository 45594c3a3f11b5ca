"""`python -m devstack ...` (scripts/run, test and bench set PYTHONPATH to scripts/)."""
import sys

from devstack.commands import main

sys.exit(main())
