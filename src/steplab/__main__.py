"""`python -m steplab ...` (and `torchrun -m steplab train ...`)."""

from steplab.cli.main import main

raise SystemExit(main())
