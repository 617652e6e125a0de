"""The `ldm-serve` console script: one entry point, one subcommand per process kind or task.

Each subcommand imports its own layer lazily, so `ldm-serve api` never loads torch.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

Handler = Callable[[argparse.Namespace], int]

DESCRIPTION = """\
Text-to-image with latent diffusion models (Rombach et al., CVPR 2022), from the command line
or as a self-hosted HTTP service: an API that queues jobs in Redis and workers that keep the
model loaded and batch them. The shipped default model draws coloured shapes on 64x64 images
and runs on a laptop CPU.

Start here:
  ldm-serve up                                        the service on http://127.0.0.1:8000
  ldm-serve client txt2img "a red circle on the left" -o out.png
  ldm-serve generate --prompt "a green triangle at the top" --out out.png   (no server)
"""
EPILOG = "`ldm-serve COMMAND --help` describes a command and its options."


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions as written; each option's default after its help unless the help names it
    (or the option has none worth saying: a flag, a required option, an unset value)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if (
            "default" in text
            or action.default in (None, argparse.SUPPRESS, True, False)
            or action.required
            or not action.option_strings
        ):
            return text
        return f"{text} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose subcommands (created from it) share its help formatter."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand registered."""
    from jobs.version import VERSION

    parser = Parser(prog="ldm-serve", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("-V", "--version", action="version", version=f"ldm-serve {VERSION}")
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", title="commands"
    )
    from cli import commands as registry

    for register in registry.REGISTRARS:
        register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments and run the chosen subcommand."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:  # Ctrl-C: one line and the shell's code for SIGINT, no traceback
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
