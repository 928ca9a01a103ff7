"""``python -m rtmoe``: the ``rtmoe`` command."""

from rtmoe.cli import main

raise SystemExit(main())
