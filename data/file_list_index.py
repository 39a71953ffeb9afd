"""Moved to the installable package: `dynunc.lists.index` (the file-list index). This name is the same
module object, not a copy, so the research layout's imports and a test's monkeypatch
reach the one implementation."""
import sys

import dynunc.lists.index

sys.modules[__name__] = dynunc.lists.index
