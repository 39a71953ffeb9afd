"""Moved to the installable package: `dynunc.lists.file_list` (file lists and coresets). This name is the same
module object, not a copy, so the research layout's imports and a test's monkeypatch
reach the one implementation."""
import sys

import dynunc.lists.file_list

sys.modules[__name__] = dynunc.lists.file_list
