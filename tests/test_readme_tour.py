"""The README's commands run as written on zoo artifacts: the main job, the command-line tour, the
generation examples and the offline hub id error (slow: it converts full presets and a matrix)."""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgeexport.zoo import PUBLISHED, SPECS

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _section(title: str) -> str:
    return README.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def _fenced(section: str, language: str) -> list[str]:
    """The lines of the first ``language`` code block of a section."""
    return _section(section).split(f"```{language}\n", 1)[1].split("```", 1)[0].splitlines()


def readme_commands() -> list[list[str]]:
    """Every ``edgeexport`` command the README shows, in the order a reader runs them: the main job, the
    tour, then generation."""
    main_job = _fenced("Set up", "bash")[0].rsplit("&& ", 1)[1]
    tour = [line for line in _fenced("Command line", "bash")[1:] if line.strip()]  # after its cd to a scratch folder
    generation = re.findall(r"`(edgeexport (?:convert|generate) [^`]+)`", _section("Generation with a KV cache"))
    return [shlex.split(line, comments=True) for line in (main_job, *tour, *generation)]


def test_the_readme_lists_the_commands_this_test_runs() -> None:
    """The parse is right (the planted failure would be a tour that silently shrank)."""
    commands = readme_commands()
    assert commands[0] == ["edgeexport", "convert", "gpt2", "--target", "onnx"]
    assert ["edgeexport", "predict", "qa", "--text", "Who?", "--text-pair", "..."] in commands
    assert ["edgeexport", "generate", "gpt2-gen", "--prompt", "Hello"] in commands
    assert len(commands) >= 18 and all(command[0] == "edgeexport" for command in commands)


def test_the_readme_writes_nothing_git_would_add() -> None:
    """The tour runs in a scratch folder; the main job's artifact and the device venv, made in the working copy,
    are ignored."""
    assert _fenced("Command line", "bash")[0].startswith('cd "$(mktemp -d)"')
    device_venv = _fenced("On the device", "bash")[0].split()[3]
    main_job = f"{readme_commands()[0][2]}-causal-lm-onnx-fp32-tiny-random"
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs git and a git checkout")
    ignored = subprocess.run(["git", "check-ignore", f"{device_venv}/", f"{main_job}/"], cwd=ROOT, capture_output=True,
                             text=True)
    assert ignored.stdout.split() == [f"{device_venv}/", f"{main_job}/"], ignored.stderr


def test_the_models_table_names_each_published_checkpoint() -> None:
    rows = [line.split(" | ") for line in _section("Models and targets").splitlines()
            if line.startswith("| ") and "`" in line]
    named = {row[0].removeprefix("| "): row[3].split("`")[1] for row in rows}
    assert named == PUBLISHED
    assert all(f"| {name} |" in _section("Models and targets") for name in SPECS)


def _run(args: list[str], folder: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgeexport.cli", *args[1:]], cwd=folder, capture_output=True,
                          text=True, timeout=3000, env={**os.environ, **env})


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("openssl") is None, reason="the Signing section makes its keys with openssl")
def test_the_readme_tour_runs_as_written(tmp_path: Path) -> None:
    for line in _fenced("Signing", "bash")[:2]:  # the key pair the tour's sign and --verify use
        subprocess.run(shlex.split(line, comments=True), cwd=tmp_path, check=True, capture_output=True)
    has_tensorrt = importlib.util.find_spec("tensorrt") is not None
    for args in readme_commands():
        result = _run(args, tmp_path)
        if args[1] == "build" and not has_tensorrt:  # the engine is built on the GPU host
            assert result.returncode == 2 and "tensorrt" in result.stderr, result.stderr
            continue
        assert result.returncode == 0, f"{shlex.join(args)}\n{result.stdout}\n{result.stderr}"
        if args[1] in ("convert", "validate") and "--json" not in args:
            assert result.stderr.strip().splitlines()[-1].startswith("PASS: "), result.stderr
    assert (tmp_path / "gpt2-causal-lm-onnx-fp32-tiny-random" / "manifest.json").is_file()
    # The offline hub id error, exactly as the README prints it.
    blocks = [block.split("```", 1)[0].splitlines()
              for block in _section("Models and targets").split("```console\n")[1:]]
    console = next(block for block in blocks if "from the Hugging Face Hub" in block[1])
    result = _run(shlex.split(console[0].removeprefix("$ ")), tmp_path, HF_HUB_OFFLINE="1")
    assert result.returncode == 2 and result.stderr.strip() == console[1]
