"""Moved to the installable package: `dynunc.interrupt` (Ctrl-C delivery to the main thread). This name is the same
module object, not a copy, so the research layout's imports and a test's monkeypatch
reach the one implementation."""
import sys

import dynunc.interrupt

sys.modules[__name__] = dynunc.interrupt
