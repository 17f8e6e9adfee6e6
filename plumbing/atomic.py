"""Crash-safe files: a file is either its old complete version or its new complete one.

A `kill -9`, a power cut or a full disk can stop a process in the middle of a write, and a
half-written snapshot is worse than none: --resume or --model would find a truncated file.
So every file is written under a temporary name in the same folder, flushed to the disk
(fsync), and only then renamed over the real name; a rename within one filesystem is atomic,
and an fsync of the folder makes the rename itself survive a power cut.
"""

import fnmatch
import os
from collections.abc import Callable
from pathlib import Path

from plumbing.system import flush_folder, stop_self

TMP_PREFIX = ".tmp-"  # ".tmp-final.keras": hidden, and it keeps the suffix Keras and numpy check


def write_atomically(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` to write a temporary file, then make it `path` in one step.

    On any error (OSError for a full disk or a read-only folder, ...) the temporary file is
    removed and the error raised, and `path` is left as it was.
    """
    path = Path(path)
    tmp = path.with_name(TMP_PREFIX + path.name)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        pause_for_tests(path.name)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    flush_folder(path.parent)


def write_text_atomically(path: str | Path, text: str) -> None:
    write_atomically(path, lambda tmp: tmp.write_text(text))


def remove_leftovers(folder: Path) -> None:
    """Delete temporary files that a killed process left behind (never a complete file)."""
    for tmp in folder.glob(TMP_PREFIX + "*"):
        tmp.unlink(missing_ok=True)


def pause_for_tests(name: str) -> None:
    """Tests only: with DQN_PAUSE_BEFORE_RENAME=PATTERN (e.g. "step_*.keras") the process stops
    itself (system.stop_self) when the temporary file of a matching name is complete but not yet renamed,
    so that a test can kill it exactly there. Unset, this is one look-up per file written."""
    pattern = os.environ.get("DQN_PAUSE_BEFORE_RENAME")
    if pattern and fnmatch.fnmatch(name, pattern):
        stop_self()
