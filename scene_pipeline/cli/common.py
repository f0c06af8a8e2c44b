"""What every command shares: exit codes, one-line errors, settings, reading script files."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from scene_pipeline.constants import MAX_SCRIPT_BYTES
from scene_pipeline.contract.script import Script
from scene_pipeline.contract.script_parsing import (
    ContractError,
    ScriptRejected,
    ScriptShape,
    parse_script,
)
from scene_pipeline.settings import ConfigurationError, Settings

EXIT_OK = 0
EXIT_NOT_COMPLETE = 1
EXIT_INVALID = 2
EXIT_BUSY = 3


class CommandError(Exception):
    """A command ends with one line on stderr and an exit code (no traceback)."""

    def __init__(self, message: str, code: int = EXIT_INVALID) -> None:
        super().__init__(message)
        self.code = code


def say(line: str) -> None:
    print(line)


def note(line: str) -> None:
    print(line, file=sys.stderr)


def load_settings() -> Settings:
    try:
        return Settings.from_env(os.environ)
    except ConfigurationError as err:
        raise CommandError(f"configuration error: {err}") from None


def read_script_file(path: Path) -> tuple[Script, ScriptShape, bytes]:
    """Read and validate one file; ScriptRejected for anything the contract refuses."""
    try:
        size = path.stat().st_size
        if size > MAX_SCRIPT_BYTES:
            raise ScriptRejected(
                [ContractError(path="$", message=f"file is {size} bytes; the limit is 5 MiB")]
            )
        if not path.is_file():
            raise ScriptRejected([ContractError(path="$", message="not a regular file")])
        data = path.read_bytes()
    except OSError as err:
        raise ScriptRejected(
            [ContractError(path="$", message=f"cannot read file: {err.strerror or err}")]
        ) from None
    script, shape = parse_script(data)
    return script, shape, data


def rejection_lines(path: Path, err: ScriptRejected) -> list[str]:
    return [f"{path}: {error.path}: {error.message}" for error in err.errors]


def read_text_file(path: Path, what: str) -> str:
    """A UTF-8 text file (a prompt), or CommandError."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise CommandError(f"{what} {path}: cannot read it ({err.strerror or err})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise CommandError(
            f"{what} {path}: not UTF-8 text (invalid byte at offset {err.start})"
        ) from None


def parse_scene_ids(raw: str) -> list[str]:
    return [s.strip() for s in raw.split(",") if s.strip()]


def operator_name() -> str:
    """Who is changing something (kept with overrides and picks)."""
    return os.environ.get("USER") or os.environ.get("LOGNAME") or "cli"
