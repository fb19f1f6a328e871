"""The one base class of mistakes a user can fix (a config key, a file, a sample, a checkpoint).

The `mibench` command prints such an error as one line, without a traceback; anything else is
a bug in the suite and keeps its traceback. Each module's own error classes derive from it.
"""

from __future__ import annotations


class MibenchError(Exception):
    """A problem the message names (key, file, sample id) together with what to do about it."""
