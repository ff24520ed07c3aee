"""User-facing errors: one message naming the file, the field and the fix."""

from __future__ import annotations

from pathlib import Path

from crossfl.redact import redact


class UserError(Exception):
    """A mistake in the user's input (file, field, flag, path).

    The CLI prints it as one line and exits non-zero, with no traceback.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | Path | None = None,
        field: str | None = None,
        fix: str | None = None,
    ) -> None:
        # A secret (a client secret in an activate line, a token from the environment) never
        # reaches the terminal or a state file through an error (crossfl.redact).
        self.message = redact(message)
        self.file = str(file) if file is not None else None
        self.field = field
        self.fix = redact(fix) if fix else fix
        super().__init__(self.render())

    def render(self) -> str:
        where = ""
        if self.file and self.field:
            where = f"{self.file}: {self.field}: "
        elif self.file:
            where = f"{self.file}: "
        elif self.field:
            where = f"{self.field}: "
        text = f"{where}{self.message}"
        if self.fix:
            text += f" (fix: {self.fix})"
        return text
