"""The container image, checked without a container engine (none runs on this machine): what
the Dockerfile copies exists and is in the build context, it runs as a non-root user with its
store on a volume and a health check on /healthz, and its lock holds every runtime dependency
and no development tool."""

from __future__ import annotations

import fnmatch
import re
import tomllib

from tests.support.processes import ROOT

DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
RUNTIME_LOCK = ROOT / "deploy" / "docker" / "requirements.lock"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    found = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def in_context(path: str) -> bool:
    """Whether .dockerignore (deny all, then allow a list) lets `path` into the build context."""
    allowed = False
    for rule in (ROOT / ".dockerignore").read_text().splitlines():
        rule = rule.strip()
        if not rule or rule.startswith("#"):
            continue
        negated = rule.startswith("!")
        pattern = rule.removeprefix("!").rstrip("/")
        if fnmatch.fnmatch(path, pattern) or path.startswith(pattern + "/"):
            allowed = negated
    return allowed


def test_what_the_image_copies_exists_and_is_in_the_build_context() -> None:
    sources = [args.split()[0] for word, args in instructions() if word == "COPY"]
    assert sources, "the Dockerfile copies nothing"
    for source in sources:
        assert (ROOT / source).exists(), source
        assert in_context(source), f"{source} is excluded by .dockerignore"
    assert not in_context("tests/conftest.py")
    assert not in_context(".venv/bin/python")


def test_non_root_with_its_store_on_a_volume_and_a_health_check() -> None:
    found = dict(instructions())
    user = found["USER"].split(":")[0]
    assert user not in ("0", "root")
    assert '"/var/lib/invoice-gateway"' in found["VOLUME"]
    assert "GATEWAY_STORE_URL=sqlite:////var/lib/invoice-gateway/gateway.db" in found["ENV"]
    assert "/healthz" in found["HEALTHCHECK"]
    assert "SIGTERM" == found["STOPSIGNAL"]
    assert '["python", "-m", "gateway"]' == found["ENTRYPOINT"]


def locked() -> dict[str, str]:
    pins = re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", RUNTIME_LOCK.read_text(), flags=re.MULTILINE)
    return {name.lower().replace("_", "-"): version for name, version in pins}


def test_the_runtime_lock_pins_every_dependency_with_hashes_and_no_dev_tool() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = locked()
    for requirement in project["dependencies"]:
        name = re.split(r"[<>=!;\[ ]", requirement, maxsplit=1)[0].lower().replace("_", "-")
        assert name in pins, f"{name} is a dependency but not in {RUNTIME_LOCK.name}"
    for tool in project["optional-dependencies"]["dev"]:
        name = re.split(r"[<>=!;\[ ]", tool, maxsplit=1)[0].lower()
        assert name not in pins, f"the dev tool {name} is in the image's lock"
    assert RUNTIME_LOCK.read_text().count("--hash=sha256:") >= len(pins)


def test_the_image_and_the_development_install_pin_the_same_versions() -> None:
    """Both locks come from one `make lock`: a package in both has one version."""
    development = {
        name.lower().replace("_", "-"): version
        for name, version in re.findall(
            r"^([A-Za-z0-9_.-]+)==(\S+)", (ROOT / "requirements.lock").read_text(), re.MULTILINE
        )
    }
    differ = {n: (v, development[n]) for n, v in locked().items() if development.get(n) != v}
    assert {} == differ
