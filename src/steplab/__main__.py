"""`python -m steplab ...` (and `torchrun -m steplab train ...`)."""

from steplab.cli import main

raise SystemExit(main())
