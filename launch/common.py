"""What the launchers share: `LAUNCHER [flags] -- COMMAND ...` parsing with one-line usage errors."""
import argparse
import sys


class UsageError(Exception):
    """Bad launcher input: names the flag at fault and how to fix it."""

    def __init__(self, flag: str, fix: str):
        super().__init__(f"{flag}: {fix}")


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr and exit status 2 (no usage block)."""

    def error(self, message: str):
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def positive_int(text: str) -> int:
    """argparse type for counts: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer; give e.g. 2")
    return value


def make_parser(module: str, doc: str) -> Parser:
    """The parser of launcher `module` (e.g. launch.local), its module docstring as the help text."""
    return Parser(
        prog=f"python -m {module}",
        usage="%(prog)s [flags] -- COMMAND [ARG ...]",
        description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def parse(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """Splits argv at the first `--`: the launcher's flags before it, the command to run after it."""
    split = argv.index("--") if "--" in argv else len(argv)
    args, command = parser.parse_args(argv[:split]), argv[split + 1 :]
    if not command:
        parser.error(f"the command to run is missing; write {parser.prog} [flags] -- python -m experiments.train ...")
    return args, command


def main(run) -> None:
    """Exits with run(sys.argv[1:]); a UsageError is one line on stderr and exit status 2."""
    try:
        status = run(sys.argv[1:])
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        status = 2
    sys.exit(status)
