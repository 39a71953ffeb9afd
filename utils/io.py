"""Moved to the installable package: `dynunc.io` (atomic file output). This name is the same
module object, not a copy, so the research layout's imports and a test's monkeypatch
reach the one implementation."""
import sys

import dynunc.io

sys.modules[__name__] = dynunc.io
