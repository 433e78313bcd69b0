"""Notice when the plan file the app loaded or wrote changes or disappears on disk."""

from __future__ import annotations

from pathlib import Path


class PlanFileWatch:
    def __init__(self, path: str | Path | None = None):
        self.path: Path | None = None
        self.stamp: float | None = None
        if path is not None:
            self.watch(path)

    def watch(self, path: str | Path) -> None:
        self.path = Path(path)
        self.stamp = self._stamp()

    def _stamp(self) -> float | None:
        try:
            return self.path.stat().st_mtime
        except OSError:
            return None

    def check(self) -> str | None:
        """A sentence when the file changed since the last look, else None."""
        if self.path is None:
            return None
        stamp = self._stamp()
        if stamp == self.stamp:
            return None
        self.stamp = stamp
        if stamp is None:
            return f"{self.path} was deleted; the plan in the app is unchanged (e exports it again)."
        return f"{self.path} changed on disk; the app keeps its plan (o reloads the file)."
