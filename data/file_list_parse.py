"""Moved to the installable package: `dynunc.lists.parse` (file-list line parsing). This name is the same
module object, not a copy, so the research layout's imports and a test's monkeypatch
reach the one implementation."""
import sys

import dynunc.lists.parse

sys.modules[__name__] = dynunc.lists.parse
