"""``python -m interbasis`` (and ``torchrun -m interbasis``): the ``interbasis`` command."""

from interbasis.cli import main

raise SystemExit(main())
