"""Output directories named on the command line (--out, --page): created, or one clear error."""

from __future__ import annotations

from pathlib import Path


def make_dir(path: Path, option: str) -> None:
    """Creates `path` and its parents; ValueError naming `option` if it exists and is not a
    directory, or cannot be created."""
    try:
        if path.exists() and not path.is_dir():
            raise ValueError(f"{option}: {str(path)!r} is not a directory")
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:            # e.g. inside another user's directory: exists() too (EACCES)
        raise ValueError(f"{option}: cannot create the directory {str(path)!r}: "
                         f"{e.strerror}") from e
