"""`--help` of many `invoice-gateway` commands in one child process (one import of the
package, not one per command): what the CLI tests and the docs tests ask of the command tree."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterable

from tests.support.processes import ROOT, base_env

_HELP = r"""
import argparse, contextlib, io, json, sys
from gateway.cli.main import build_parser

def subcommands(parser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices
    return {}

def walk(parser, words):
    for name, child in subcommands(parser).items():
        yield [*words, name]
        yield from walk(child, [*words, name])

def help_of(words):
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            build_parser().parse_args([*words, "--help"])
        except SystemExit as exit:
            return [exit.code or 0, out.getvalue()]
    return [1, "no exit"]

asked = json.loads(sys.argv[1])
if asked is None:
    asked = list(walk(build_parser(), []))
results = {}
for words in asked:
    parser = subcommands(build_parser()).get(words[0])
    if len(words) == 2 and parser is not None and not subcommands(parser):
        words = words[:1]  # the second word is an argument, not a subcommand
    results[" ".join(words)] = help_of(words)
print(json.dumps(results))
"""


def help_results(commands: Iterable[Iterable[str]] | None = None) -> dict[str, list[object]]:
    """`{"store copy": [exit status, help text]}` for each command (words), or — None — for
    every command and subcommand the CLI has."""
    asked = None if commands is None else sorted(list(words) for words in commands)
    run = subprocess.run(
        [sys.executable, "-c", _HELP, json.dumps(asked)],
        cwd=ROOT,
        env=base_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    results: dict[str, list[object]] = json.loads(run.stdout)
    return results
