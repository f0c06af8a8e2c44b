"""`scene-pipeline`: validate scripts, run them, and steer their pictures.

Exit codes: 0 ok / complete, 1 partial or failed run, 2 invalid input, usage or
configuration, 3 the script is busy (another command or run holds it).

Dagster and the providers' SDKs are imported only by commands that start a run, so that the
others (and a run of an up-to-date script) answer at once.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from scene_pipeline.cli import commands
from scene_pipeline.cli.common import EXIT_INVALID, CommandError, note
from scene_pipeline.storage import StorageError

LOG_LEVELS = ["DEBUG", "INFO", "WARNING", "ERROR"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, exit 2
        self.exit(EXIT_INVALID, f"{self.prog}: error: {message}\n")


def _run_options(parser: argparse.ArgumentParser, *, candidates: bool) -> None:
    """The options of the commands that start a run."""
    if candidates:
        parser.add_argument(
            "--candidates", type=int, metavar="N", help="images per scene in this run (1-4)"
        )
    parser.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="when another command or run holds the script, wait this long (default: exit 3)",
    )
    parser.add_argument(
        "--log-level", default="WARNING", choices=LOG_LEVELS, help="Dagster event log level"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="scene-pipeline", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    validate = sub.add_parser("validate", help="check script files against the contract")
    validate.add_argument("files", nargs="+", type=Path, metavar="FILE")
    sub.add_parser("schema", help="print the JSON Schema of the canonical script document")
    _add_run(sub)

    submit = sub.add_parser("submit", help="validate a script and upload it to the inbox")
    submit.add_argument("file", type=Path, metavar="FILE")
    submit.add_argument("--name", help="object name under the inbox prefix")

    status = sub.add_parser("status", help="a script's scenes, portraits and what is due")
    status.add_argument("script_id", metavar="SCRIPT_ID")
    _add_redraw(sub)

    pick = sub.add_parser("pick", help="show candidate K of a scene (costs nothing)")
    pick.add_argument("script_id", metavar="SCRIPT_ID")
    pick.add_argument("scene_id", metavar="SCENE_ID")
    pick.add_argument("k", type=int, metavar="K")
    pick.add_argument("--note", default="")
    _add_portrait(sub)
    return parser


def _add_run(sub: argparse._SubParsersAction[_Parser]) -> None:
    run = sub.add_parser("run", help="accept a script file and draw what it needs")
    run.add_argument("file", type=Path, metavar="FILE")
    run.add_argument("--scenes", default="", metavar="ID,...", help="only these scenes")
    run.add_argument("--force", action="store_true", help="redraw them even if unchanged")
    run.add_argument(
        "--refresh-stale",
        action="store_true",
        help="also redraw scenes that are stale because the configuration changed",
    )
    _run_options(run, candidates=True)


def _add_redraw(sub: argparse._SubParsersAction[_Parser]) -> None:
    redraw = sub.add_parser("redraw", help="redraw one scene, with a new prompt or the same")
    redraw.add_argument("script_id", metavar="SCRIPT_ID")
    redraw.add_argument("--scene", required=True, metavar="ID")
    prompt = redraw.add_mutually_exclusive_group()
    prompt.add_argument("--prompt", metavar="TEXT", help="draw with exactly this prompt")
    prompt.add_argument("--prompt-file", type=Path, metavar="FILE", help="the prompt, UTF-8")
    prompt.add_argument("--clear-prompt", action="store_true", help="back to the written prompt")
    redraw.add_argument("--note", default="", help="kept with the override")
    _run_options(redraw, candidates=True)


def _add_portrait(sub: argparse._SubParsersAction[_Parser]) -> None:
    portrait = sub.add_parser("portrait", help="pin an uploaded portrait, or redraw one")
    portrait.add_argument("script_id", metavar="SCRIPT_ID")
    portrait.add_argument("name", metavar="NAME")
    how = portrait.add_mutually_exclusive_group(required=True)
    how.add_argument("--image", type=Path, metavar="FILE", help="a PNG or JPEG to pin")
    how.add_argument("--redraw", action="store_true", help="draw a new portrait now")
    portrait.add_argument("--note", default="")
    _run_options(portrait, candidates=False)


COMMANDS = {
    "validate": commands.validate,
    "schema": commands.schema,
    "run": commands.run,
    "submit": commands.submit,
    "status": commands.status,
    "redraw": commands.redraw,
    "pick": commands.pick,
    "portrait": commands.portrait,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except CommandError as err:
        note(str(err))
        return err.code
    except StorageError as err:
        note(f"storage error: {err}")
        return 1


def entry() -> None:
    """The `scene-pipeline` command: `main`, then a quick exit.

    After a run, tearing down the interpreter (finalising Dagster's and the SDKs' modules)
    took 1.7 s (measured with bench/throughput.py): everything has been written, flushed and
    closed by then (the run, the manifest, the lease, the instance), so the command exits at
    once instead."""
    code = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
