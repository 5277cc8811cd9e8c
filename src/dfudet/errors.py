"""The one exception type for errors a user can cause (bad input, bad config, wrong checkpoint)."""

from __future__ import annotations


class DfudetError(Exception):
    """A user-facing error: the message names the file/item, the problem and the fix; the CLI prints it plainly."""


class ConfigError(DfudetError):
    """Invalid configuration value or file."""


class DataError(DfudetError):
    """Invalid image, annotation or dataset."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        self.problems = list(problems or [])
        if self.problems:
            shown = self.problems[:50]
            extra = f"\n  ... and {len(self.problems) - 50} more" if len(self.problems) > 50 else ""
            message = message + "\n" + "\n".join(f"  - {p}" for p in shown) + extra
        super().__init__(message)


class CheckpointError(DfudetError):
    """Missing, corrupt or incompatible checkpoint."""
