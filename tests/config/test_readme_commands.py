"""Every `snakemake ...` command line the README shows plans (dry run), overrides included."""
from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
SKIP = {
    "--profile profiles/slurm": "needs a SLURM cluster (snakemake-executor-plugin-slurm)",
    "--report": "builds the report of a finished run",
}


def readme_commands() -> list[str]:
    """Command lines in ```bash blocks (with `\\` continuations) and in inline `code`."""
    text = (REPO / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("snakemake "):
                commands.append(line)
    for span in re.findall(r"`(snakemake [^`]*)`", text):
        commands.append(span.replace("\\|", "|").split("|")[0].strip())
    return list(dict.fromkeys(commands))


COMMANDS = readme_commands()


def test_readme_shows_the_override_examples():
    assert any("--config" in c and "gpus_per_job" in c for c in COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_plans(command, tmp_path):
    for marker, reason in SKIP.items():
        if marker in command:
            pytest.skip(reason)
    args = shlex.split(command)[1:]
    args = [a for a in args if a not in ("--cores", "all") and not a.isdigit()]
    args = [a for i, a in enumerate(args) if not (i and args[i - 1] == "--directory")]
    args = [a for a in args if a != "--directory"]
    done = subprocess.run([SNAKEMAKE, "-n", "--cores", "1", "--directory", str(tmp_path), *args],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{command}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"


def test_a_bad_option_stops_the_dry_run_naming_the_key(tmp_path):
    done = subprocess.run([SNAKEMAKE, "-n", "--cores", "1", "--directory", str(tmp_path),
                           "--config", 'training={"scheduler": "onecycle"}'],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "onecycle" in done.stderr + done.stdout and "scheduler" in done.stderr + done.stdout
