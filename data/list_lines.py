"""Moved to the installable package: `dynunc.lists.lines` (copying the kept lines of a list). This name is the same
module object, not a copy, so the research layout's imports and a test's monkeypatch
reach the one implementation."""
import sys

import dynunc.lists.lines

sys.modules[__name__] = dynunc.lists.lines
