"""One exception type for every problem a user can fix: it names the file, what is wrong, and the fix."""
from __future__ import annotations

import os


class MstError(Exception):
    """A user-facing error. The CLI prints it without a traceback and exits with code 2.

    Args:
        problem: what is wrong, in one sentence.
        path: the file or folder concerned (named in the message), if any.
        fix: what the user can do about it, if known.
    """

    def __init__(self, problem: str, path: str | os.PathLike | None = None, fix: str | None = None):
        self.problem, self.path, self.fix = problem, (os.fspath(path) if path is not None else None), fix
        msg = f"{self.path}: {problem}" if self.path else problem
        if fix:
            msg += f"\n  fix: {fix}"
        super().__init__(msg)


class DataError(MstError):
    """A problem with an input audio file or data folder."""
