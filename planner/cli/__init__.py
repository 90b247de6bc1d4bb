"""The ``fitplan`` command line.

Each sub-command lives in its own module with two functions (the Accelerate pattern):
``register(subparsers)`` adds its parser and ``run(args) -> int`` turns the parsed arguments into a
typed call of the library and prints the result (``set_defaults(func=run)``; a command that answers in
well under a second also sets ``quick=True``, see :func:`console_main`). This module only wires
them together and turns user errors into one clear line on stderr with exit code 2 (never a traceback).

The planner's own commands (sizing, catalog, registry) are listed in ``COMMAND_MODULES``. The upper
packages (``executors``: run, fixtures, ...; ``search``: search, results, report, ...) register theirs
through the ``fitplan.commands`` entry-point group (``pyproject.toml``): each entry names a function
``register(subparsers)``. The planner never imports them by name, so the dependency arrows keep pointing
one way (planner <- executors, planner <- search). Plugins are loaded only when the command line names
a command the planner does not own (or asks for help), so the quick sizing commands do not pay for
reading the package metadata.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
from collections.abc import Callable, Sequence

from planner.cli import compare as _compare
from planner.cli.parser import FitplanParser
from planner.cli import estimate as _estimate
from planner.cli import fits as _fits
from planner.cli import hardware as _hardware
from planner.cli import models as _models
from planner.cli import plan as _plan
from planner.cli import size as _size
from planner.cli import training_flags as _training_flags  # noqa: F401  (registers the --mode flags)

# Order = order in `fitplan --help`; the planner's own commands first, then the registered ones.
COMMAND_MODULES: list = [_hardware, _models, _estimate, _fits, _size, _plan, _compare]
# Top-level command names of COMMAND_MODULES (a command line naming one of them needs no plugins).
BUILTIN_COMMANDS: frozenset[str] = frozenset({"hardware", "models", "estimate", "fits", "size", "plan", "compare"})
PLUGIN_GROUP = "fitplan.commands"

EXIT_USER_ERROR = 2


def plugin_registrars() -> list[tuple[str, Callable[[argparse._SubParsersAction], None]]]:
    """``(name, register)`` of every ``fitplan.commands`` entry point, sorted by name.

    An entry whose module cannot be imported is reported on stderr (one line) and skipped, so one
    broken installation does not take the sizing commands down with it.
    """
    from importlib.metadata import entry_points

    found = []
    for entry in sorted(entry_points(group=PLUGIN_GROUP), key=lambda e: e.name):
        try:
            found.append((entry.name, entry.load()))
        except Exception as error:  # noqa: BLE001 - a broken plugin must not break the planner's commands
            print(f"fitplan: warning: the {entry.name!r} commands are unavailable ({entry.value}: "
                  f"{_one_line(error)})", file=sys.stderr)
    return found


def _needs_plugins(argv: Sequence[str]) -> bool:
    """True unless the first command word of ``argv`` is one of the planner's own commands."""
    words = iter(argv)
    for word in words:
        if word == "--hardware-file":
            next(words, None)
        elif word.startswith("--hardware-file="):
            continue
        elif word == "--version":
            return False
        elif word.startswith("-"):
            return True  # --help or a mistake: show everything there is
        else:
            return word not in BUILTIN_COMMANDS
    return True


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The ``fitplan`` parser; registered plugin commands are added unless ``argv`` names a built-in one."""
    parser = FitplanParser(
        prog="fitplan",
        description="Will it fit, what will it cost, and how should I compress it?",
    )
    parser.add_argument("--version", action=_VersionAction, help="print fitplan's version and exit")
    parser.add_argument(
        "--hardware-file",
        action="append",
        default=[],
        metavar="PATH",
        help="extra accelerator catalog TOML file (repeatable); entries override built-ins by name",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for module in COMMAND_MODULES:
        module.register(subparsers)
    if argv is None or _needs_plugins(argv):
        for _, register in plugin_registrars():
            register(subparsers)
    return parser


class _VersionAction(argparse.Action):
    """``fitplan --version``: the installed distribution's version (read only when asked)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, help: str | None = None):
        super().__init__(option_strings, dest=dest, default=argparse.SUPPRESS, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            text = version("fitplan")
        except PackageNotFoundError:
            text = "unknown (not installed; running from a checkout)"
        print(f"fitplan {text}")
        parser.exit()


def _parse(argv: list[str]) -> argparse.Namespace | int:
    """Parsed arguments, or exit code 2 after one line when a number is NaN/inf (argparse takes them)."""
    from planner.validate import flags_by_dest, reject_non_finite_args

    parser = build_parser(argv)
    args = parser.parse_args(argv)
    args._flags = flags_by_dest(parser)  # messages name the flags users typed, not Python keywords
    try:
        reject_non_finite_args(parser, args)
    except _user_error_types() as error:
        print(f"fitplan: error: {_one_line(error)}", file=sys.stderr)
        return EXIT_USER_ERROR
    return args


def _user_error_types() -> tuple[type[BaseException], ...]:
    import pydantic

    import hardware_db
    from planner.errors import FitplanError

    return (FitplanError, hardware_db.CatalogError, pydantic.ValidationError)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parse(argv)
    return args if isinstance(args, int) else _run_command(args)


def _run_command(args: argparse.Namespace) -> int:
    user_errors = _user_error_types()
    try:
        if args.hardware_file:
            import hardware_db

            hardware_db.load_user_files(args.hardware_file)
        return int(args.func(args) or 0)
    except user_errors as error:
        from planner.validate import name_flags

        message = name_flags(_one_line(error), getattr(args, "_flags", {}), getattr(args, "field_flags", None))
        print(f"fitplan: error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("fitplan: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


def console_main() -> int:
    """The ``fitplan`` program (console script and ``python -m planner.cli``): :func:`main` on ``sys.argv``.

    Tuned for a process that ends after one command (not in :func:`main`, which tests call many times
    in one process). A command registered with ``quick=True`` (a sizing answer computed in well under a
    second from data files and formulas) runs

    - without the cyclic garbage collector: it creates ~0.1 million long-lived objects (numpy, pydantic,
      the catalogs, memory plans) and almost no reference cycles, so collection passes only cost time
      (~40 ms of `fitplan fits`); reference counting still frees memory;
    - with one OpenBLAS thread unless ``OPENBLAS_NUM_THREADS`` is set: its arrays are far too small for
      threaded BLAS, and starting the thread pool when numpy is imported costs ~30 ms.

    Other commands (real workloads) keep both. Before the interpreter exits, ``gc.freeze()`` spares its
    final collections a walk over every live object (~0.1 s after the output is printed). Figures:
    benchmarks/planner_speed.py.
    """
    gc.disable()  # building the parser imports the engine profiles: no cycles either
    argv = sys.argv[1:]
    args = _parse(argv)
    if isinstance(args, int):
        return args
    if getattr(args, "quick", False):
        # Read when numpy is first imported, which only the command itself does.
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    else:
        gc.enable()
    status = _run_command(args)
    gc.freeze()
    return status


def _one_line(error: BaseException) -> str:
    """One readable line: pydantic errors become 'field: reason; field: reason'."""
    errors = getattr(error, "errors", None)
    if callable(errors) and type(error).__name__ == "ValidationError":
        parts = []
        for item in errors():
            location = ".".join(str(part) for part in item.get("loc", ()))
            message = str(item.get("msg", "")).removeprefix("Value error, ")
            parts.append(f"{location}: {message}" if location else message)
        return "; ".join(parts)
    text = " ".join(str(error).split())
    return text if text else type(error).__name__


if __name__ == "__main__":  # pragma: no cover - `python -m planner.cli`
    sys.exit(console_main())
