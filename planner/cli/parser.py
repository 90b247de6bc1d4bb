"""The ``fitplan`` argument parser: argparse's, with one-line errors that suggest what the user meant.

argparse (Python 3.11) answers a misspelt flag with "unrecognized arguments: --max-acuracy-loss 3", a
misspelt choice with the whole list, and a misspelt required flag with "the following arguments are
required: --gpu" without naming what was typed instead; and it prints its usage block first. Here every
such mistake is one line on stderr naming what the user typed and the closest valid flag or choice
(``difflib``), then ``fitplan CMD --help`` for the rest; the exit code stays 2. Sub-command parsers
(the planner's and the plugins', added through ``add_subparsers``) are of the same class.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from collections.abc import Sequence

_CHOICE = re.compile(r"argument (?P<flag>\S+): invalid choice: '(?P<value>.*?)' \(choose from (?P<choices>.*)\)$")


def close_match(word: str, candidates: Sequence[str]) -> str | None:
    """The candidate closest to ``word`` (difflib's ratio >= 0.6), or None."""
    found = difflib.get_close_matches(word, list(candidates), n=1)
    return found[0] if found else None


class FitplanParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line with a close match (see the module docstring)."""

    _argv: list[str] | None = None

    def parse_known_args(self, args=None, namespace=None):  # noqa: ANN001, ANN201 - argparse's signature
        self._argv = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)

    def _chosen(self) -> FitplanParser | None:
        """The sub-command parser the command line chose (None: no sub-commands, or none named)."""
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                chosen = next((w for w in self._argv or () if w in action.choices), None)
                if chosen is not None:
                    return action.choices[chosen]
        return None

    def _options(self) -> list[str]:
        """Long option strings of this parser and of the sub-command the command line chose."""
        options = [o for action in self._actions for o in action.option_strings if o.startswith("--")]
        chosen = self._chosen()
        return options + chosen._options() if chosen is not None else options

    def _required_missing(self) -> list[str]:
        return [o for action in self._actions if action.required for o in action.option_strings]

    def hint(self, message: str) -> str:
        """The message with what the user typed and the closest valid flag or choice."""
        if message.startswith("unrecognized arguments: "):
            typed = [w.partition("=")[0] for w in message.removeprefix("unrecognized arguments: ").split()
                     if w.startswith("-")]
            if typed:
                options = self._options()
                parts = []
                for word in typed:
                    match = close_match(word, options)
                    parts.append(f"{word} is not a flag of this command" + (f" (did you mean {match}?)" if match
                                                                            else ""))
                return "; ".join(parts)
        found = _CHOICE.match(message)
        if found:
            choices = re.findall(r"'((?:[^'\\]|\\.)*)'", found["choices"])
            match = close_match(found["value"], choices)
            return (f"{found['flag']} {found['value']!r} is not one of {', '.join(choices)}"
                    + (f" (did you mean {match!r}?)" if match else ""))
        found = re.match(r"argument (?P<flag>\S+): (?P<rest>.*)$", message)
        if found and found["rest"].startswith(found["flag"].split("/")[0]):
            return found["rest"]  # our own type checks already name the flag
        if message.startswith("the following arguments are required: "):
            unknown = [w.partition("=")[0] for w in self._argv or () if w.startswith("--")
                       and w.partition("=")[0] not in self._options()]
            for word in unknown:
                match = close_match(word, self._required_missing())
                if match:
                    return f"{message} (you typed {word}: did you mean {match}?)"
            if unknown:
                return f"{message} ({', '.join(unknown)}: not a flag of this command)"
        return message

    def error(self, message: str):  # noqa: ANN201 - argparse's signature (NoReturn)
        chosen = self._chosen()
        if message.startswith("unrecognized arguments: ") and isinstance(chosen, FitplanParser):
            chosen.error(message)  # argparse reports a sub-command's leftovers at the top: name the sub-command
        self.exit(2, f"{self.prog}: error: {self.hint(message)}. Run '{self.prog} --help' for the flags.\n")
