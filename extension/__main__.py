"""``python -m extension`` is ``lora-bridge``."""

from .cli import main

raise SystemExit(main())
