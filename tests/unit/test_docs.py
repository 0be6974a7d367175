"""The documentation site builds with warnings as errors (broken links and anchors, bad
docstrings, pages left out of the nav), offline; and every `rayr` command line it shows exists."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest
import yaml

from rayr.cli.main import cli

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))


def _build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    # NO_MKDOCS_2_WARNING: Material's banner about MkDocs 2 (not a build warning; just noise)
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config),
                           "--site-dir", str(site)], capture_output=True, text=True, env=env, timeout=120,
                          cwd=ROOT)


def test_the_site_builds_without_warnings(tmp_path):
    out = _build(ROOT / "mkdocs.yml", tmp_path / "site")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "WARNING" not in out.stderr, out.stderr
    api = (tmp_path / "site" / "api" / "rayr" / "index.html").read_text()
    assert 'id="rayr.api.init"' in api and "Connect this process to a cluster" in api  # from docstrings
    changelog = (tmp_path / "site" / "changelog" / "index.html").read_text()
    assert "Keep a Changelog" in changelog  # CHANGELOG.md included
    assert (tmp_path / "site" / "architecture" / "index.html").exists()


def test_a_broken_link_fails_the_build(tmp_path):
    """The strictness is real: the same settings refuse a page that links nowhere."""
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text("# Home\n\nSee [the guide](missing.md) and [this](#no-such-heading).\n")
    config.update(docs_dir=str(docs), nav=[{"Home": "index.md"}], plugins=["search"])
    path = tmp_path / "mkdocs.yml"
    path.write_text(yaml.safe_dump(config))
    out = _build(path, tmp_path / "site")
    assert out.returncode != 0
    assert "missing.md" in out.stderr and "no-such-heading" in out.stderr


# ------------------------------------------------------------------ commands shown in the docs
CODE_BLOCK = re.compile(r"```(?:bash|sh|console)?\n(.*?)```", re.S)
INLINE = re.compile(r"`(rayr [^`]+)`")
STOP = {"|", "&&", ";", "#", "--", "..."}


def _command_lines(text: str) -> list[str]:
    """Each `rayr ...` command in the page's shell blocks and inline code."""
    candidates = [line for block in CODE_BLOCK.findall(text) for line in block.splitlines()]
    lines = []
    for candidate in candidates + INLINE.findall(text):
        for part in re.split(r"&&|;", candidate):
            words = part.split()
            while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):  # VAR=value rayr ...
                words.pop(0)
            if words[:1] == ["rayr"]:
                lines.append(" ".join(words))
    return lines


def _check(line: str) -> list[str]:
    """What is wrong with one `rayr ...` command line: unknown commands or options."""
    command: click.Command = cli
    words = line.split()[1:]
    while words and isinstance(command, click.Group) and re.fullmatch(r"[a-z][a-z-]*", words[0]):
        sub = command.commands.get(words[0])
        if sub is None:
            return [f"{line!r}: no command {words[0]!r}"]
        command = sub
        words.pop(0)
    known = {name for param in command.params for name in getattr(param, "opts", [])} | {"--help"}
    wrong = []
    for word in words:
        if word in STOP or word.startswith("#"):
            break
        if word.startswith("-") and word.split("=")[0] not in known:
            wrong.append(f"{line!r}: no option {word.split('=')[0]} of {command.name}")
    return wrong


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(DOCS)))
def test_every_command_line_in_the_docs_exists(page):
    problems = [p for line in _command_lines(page.read_text()) for p in _check(line)]
    assert not problems, "\n".join(problems)


def test_the_command_check_catches_a_made_up_flag():
    assert _check("rayr start --head --dashboard-colour blue")
    assert not _check("rayr start --head --dashboard-port 8265")
    assert _check("rayr deploy x.yaml")
    assert not _check("rayr start --head --port=6379 --num-cpus 4")
    assert not _check("rayr job logs -f abc")
    assert not _check("rayr --version")
    assert _command_lines("run `rayr stop; rayr up x.yaml`, then\n```bash\nX=1 rayr status # all\n```\n") == [
        "rayr status # all", "rayr stop", "rayr up x.yaml"]
