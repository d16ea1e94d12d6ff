"""Shared helpers of the ops tests: real Snakemake snippets and small workdirs."""
from __future__ import annotations

from pathlib import Path

import pytest

# Trimmed from a real Snakemake 9.27 log of a run that was killed after its first job.
SNAKEMAKE_LOG_RUNNING = """\
Assuming unrestricted shared filesystem usage.

SNAKEMAKE
=========
  Date: 2026-12-01 08:55:03
  Snakemake version: 9.27.1
  Command: /work/main/.venv/bin/snakemake --cores 1

Building DAG of jobs...
Using shell: /usr/bin/bash
Provided cores: 1 (use --cores to define parallelism)
Rules claiming more threads will be scaled down.
Job stats:
job      count
-----  -------
work         3
all          1
total        4

Select jobs to execute...
Execute 1 jobs...
[Tue Dec  1 08:55:03 2026]
localrule work:
    output: out/2.txt
    log: logs/work/2.log
    jobid: 3
    reason: Missing output files: out/2.txt
    wildcards: i=2
    resources: tmpdir=/tmp
[Tue Dec  1 08:55:04 2026]
Finished jobid: 3 (Rule: work)
1 of 4 steps (25%) done
Select jobs to execute...
Execute 1 jobs...
[Tue Dec  1 08:55:05 2026]
localrule work:
    output: out/0.txt
    log: logs/work/0.log
    jobid: 1
    reason: Missing output files: out/0.txt
    wildcards: i=0
    resources: tmpdir=/tmp
"""

# Trimmed from a real Snakemake 9.27 log of a run whose rule b failed.
SNAKEMAKE_LOG_FAILED = """\
Job stats:
job      count
-----  -------
a            1
b            1
all          1
total        3

Select jobs to execute...
Execute 1 jobs...
[Tue Dec  1 08:56:47 2026]
localrule b:
    output: out/b.txt
    jobid: 2
    reason: Missing output files: out/b.txt
    resources: tmpdir=/tmp
RuleException:
CalledProcessError in file "/tmp/ops_smk2/Snakefile", line 8:
Command 'set -euo pipefail;  exit 3' returned non-zero exit status 3.
[Tue Dec  1 08:56:47 2026]
Error in rule b:
    message: None
    jobid: 2
    output: out/b.txt
    shell:
        exit 3
        (command exited with non-zero exit code)
Shutting down, this might take some time.
Exiting because a job execution failed. Look above for error messages
Complete log(s): /tmp/ops_smk2/.snakemake/log/2026-12-01T085647.686705.snakemake.log
Elapsed time: 0:00:00.219884
WorkflowError:
At least one job did not complete successfully.
"""


def write_snakemake_log(workdir: Path, text: str, name: str = "2026-12-01T085503.674411") -> Path:
    path = workdir / ".snakemake" / "log" / f"{name}.snakemake.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    path = tmp_path / "run"
    path.mkdir()
    return path
