"""``python -m cira_db``: the same command line as ``cira-db``."""

from cira_db._cli import main

raise SystemExit(main())
