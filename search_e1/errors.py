"""The base class of errors caused by user input (config, data file, corpus line, model path).

The CLI reports these as one clear line (file, field or line, and what was expected) and exits
with status 2 instead of printing a traceback. Each module derives its own error from it.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path


class UserInputError(ValueError):
    """Bad user input; the message names the file/field/line and what was expected."""


@contextmanager
def writing(target: Path, tmp: Path) -> Iterator[None]:
    """An error while writing ``target`` through ``tmp`` (full disk, read-only directory) becomes a
    `UserInputError` naming it; the half-written ``tmp`` (file or directory) is removed."""
    from safetensors import SafetensorError

    try:
        yield
    except (OSError, SafetensorError) as err:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            with suppress(OSError):
                tmp.unlink(missing_ok=True)
        raise UserInputError(f"cannot write {target} ({getattr(err, 'strerror', None) or err}); the run keeps its "
                             "last finished phase: free space or fix permissions, then run the same command") from None
