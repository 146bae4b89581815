"""The base class of errors caused by user input (config, data file, corpus line, model path).

The CLI reports these as one clear line (file, field or line, and what was expected) and exits
with status 2 instead of printing a traceback. Each module derives its own error from it.
"""

from __future__ import annotations


class UserInputError(ValueError):
    """Bad user input; the message names the file/field/line and what was expected."""
