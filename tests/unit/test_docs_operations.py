"""docs/operations.md stays true to the repository.

- every relative link resolves to a file, and its anchor to a heading (GitHub's slugs);
- every repository path written in inline code (`deploy/…`, `config/…`, `docs/…`,
  `dashboards/…`, `scripts/…`) exists;
- every `invoice-gateway COMMAND [SUBCOMMAND]` (or `python -m gateway …`) in a code block is a
  real command: its `--help` exits 0, all of them checked in one child process;
- the sections other documents link to keep their headings.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

from tests.support.cli import help_results

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "operations.md"

SECTIONS = [
    "Choosing a way to run it",
    "Before you start",
    "Docker Compose",
    "Kubernetes",
    "systemd",
    "Dashboards and alerts",
    "Sizing",
    "Backups and restore",
    "Upgrades",
    "Day-two checklist",
]

_FENCE = re.compile(r"^\s*(```|~~~)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_INLINE_CODE = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
_PATH_PREFIXES = ("deploy/", "config/", "docs/", "dashboards/", "scripts/")
_COMMAND = re.compile(
    r"(?:invoice-gateway|python -m gateway)\s+([a-z][a-z-]*)(?:\s+([a-z][a-z-]*))?(?=[\s;|&)'\"]|$)"
)


def split_code(text: str) -> tuple[list[str], list[str]]:
    """The lines outside fenced code blocks, and those inside them."""
    prose: list[str] = []
    code: list[str] = []
    fenced = False
    for line in text.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            continue
        (code if fenced else prose).append(line)
    return prose, code


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link: its text
    text = text.lower()
    kept = []
    for char in text:
        category = unicodedata.category(char)
        if char in " -_" or category[0] in "LN" or category == "Mc" or category == "Mn":
            kept.append(char)
    return "".join(kept).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    prose, _ = split_code(path.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    result: set[str] = set()
    for line in prose:
        match = _HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        result.add(base if count == 0 else f"{base}-{count}")
    return result


def link_problems(guide: Path) -> list[str]:
    prose, _ = split_code(guide.read_text(encoding="utf-8"))
    text = "\n".join(_INLINE_CODE.sub("", line) for line in prose)
    problems = []
    for target in _LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        path = (guide.parent / file_part).resolve() if file_part else guide
        if not path.exists():
            problems.append(f"{target}: no such file {path}")
            continue
        if anchor:
            if path.suffix != ".md":
                problems.append(f"{target}: an anchor into a file that is not Markdown")
            elif anchor not in anchors(path):
                problems.append(f"{target}: no heading with the anchor #{anchor} in {path.name}")
    return problems


def path_problems(guide: Path, root: Path = ROOT) -> list[str]:
    prose, _ = split_code(guide.read_text(encoding="utf-8"))
    problems = []
    for line in prose:
        for span in _INLINE_CODE.findall(line):
            # A span that is a path, not one inside a command (`kubectl exec deploy/NAME`).
            if not span.startswith(_PATH_PREFIXES) or " " in span:
                continue
            path = span.split("#", 1)[0]
            if any(char in path for char in "*?["):
                if not list(root.glob(path)):
                    problems.append(f"`{span}` matches no file")
            elif not (root / path).exists():
                problems.append(f"`{span}` does not exist")
    return problems


def commands(guide: Path) -> set[tuple[str, ...]]:
    """Each command line in a code block, as (command,) and, when a second word follows, as
    (command, word): whether the word is a subcommand is decided by the command's parser."""
    _, code = split_code(guide.read_text(encoding="utf-8"))
    found: set[tuple[str, ...]] = set()
    for line in code:
        line = line.split(" #", 1)[0]
        for command, word in _COMMAND.findall(line):
            found.add((command, word) if word else (command,))
    return found


def command_results(found: set[tuple[str, ...]]) -> dict[str, list[object]]:
    """`--help` of every command, in one child process: {"store copy": [exit status, output]}."""
    return {
        words: [code, str(output)[-300:]] for words, (code, output) in help_results(found).items()
    }


def test_sections_keep_their_headings() -> None:
    text = GUIDE.read_text(encoding="utf-8")
    prose, _ = split_code(text)
    level_two = [line[3:].strip() for line in prose if line.startswith("## ")]
    assert level_two == SECTIONS


def test_links_and_anchors_resolve() -> None:
    assert link_problems(GUIDE) == []


def test_repository_paths_exist() -> None:
    assert path_problems(GUIDE) == []


def test_commands_are_real() -> None:
    found = commands(GUIDE)
    assert ("store", "backup") in found  # the pattern sees commands and subcommands
    assert ("check-config",) in found
    results = command_results(found)
    failing = {command: result for command, result in results.items() if result[0] != 0}
    assert failing == {}


# The checks can fail: each is run on a guide broken on purpose.


@pytest.fixture
def broken(tmp_path: Path) -> Path:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "runbook.md").write_text(
        "# Runbook\n\n## The store is down\n\n```sh\n# not a heading\n```\n"
    )
    return docs / "operations.md"


def test_a_broken_link_is_found(broken: Path) -> None:
    broken.write_text(
        "## Links\n\n[ok](runbook.md#the-store-is-down) [self](#links)\n"
        "[gone](missing.md) [bad anchor](runbook.md#the-store-is-up)\n"
        "[code](runbook.md#not-a-heading)\n"
    )
    assert link_problems(broken) == [
        f"missing.md: no such file {broken.parent / 'missing.md'}",
        "runbook.md#the-store-is-up: no heading with the anchor #the-store-is-up in runbook.md",
        "runbook.md#not-a-heading: no heading with the anchor #not-a-heading in runbook.md",
    ]


def test_a_missing_path_is_found(broken: Path) -> None:
    broken.write_text(
        "Edit `deploy/compose/compose.yaml` and `deploy/prometheus/rules/*.yml`, "
        "not `deploy/compose/nothing.yaml` or `deploy/nothing/*.yml`; "
        "`kubectl exec deploy/invoice-gateway` names no file.\n"
        "```sh\nvi deploy/compose/gateway.env   # in a code block: created by the reader\n```\n"
    )
    assert path_problems(broken) == [
        "`deploy/compose/nothing.yaml` does not exist",
        "`deploy/nothing/*.yml` matches no file",
    ]


def test_a_made_up_command_is_found(broken: Path) -> None:
    broken.write_text(
        "```sh\ninvoice-gateway store copy --from a --to b\n"
        "invoice-gateway check-config config/gateway.yaml\n"
        "invoice-gateway tenant add erp   # an argument after the subcommand\n"
        "python -m gateway outbox frobnicate --all\ninvoice-gateway restart-everything\n```\n"
    )
    found = commands(broken)
    assert found == {
        ("store", "copy"),
        ("check-config",),
        ("tenant", "add"),
        ("outbox", "frobnicate"),
        ("restart-everything",),
    }
    results = command_results(found)
    assert {command: result[0] for command, result in results.items()} == {
        "store copy": 0,
        "check-config": 0,
        "tenant add": 0,
        "outbox frobnicate": 2,
        "restart-everything": 2,
    }
