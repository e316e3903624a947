"""`python -m cli` is `exam-events`."""

from cli.main import main

raise SystemExit(main())
