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


def first_line(err: BaseException, default: str | None = None) -> str:
    """The first line of an exception's message, for a one-line report (``default``, else the
    exception's type name, when the message is empty).

    >>> first_line(ValueError("bad header\\nat byte 8")), first_line(EOFError())
    ('bad header', 'EOFError')
    """
    text = str(err).strip()
    return text.splitlines()[0] if text else (default or type(err).__name__)


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
