"""Chaos check: kill the workflow at random moments, resume it, compare with an uninterrupted run.

The workflow (``--configfile``) runs once uninterrupted (the reference, or ``--reference``
when given), then again in a fresh folder where it is killed ``--kills`` times with SIGKILL
(the whole process group: Snakemake and every job it started) and resumed each time with
``--rerun-incomplete`` after the stale lock is cleared (``hms_core.ops.resume``). When the
last resume finishes, every artifact must equal the reference's (``bench/compare_runs.py``:
weights tensor-equal, OOF frames, Zarr arrays and ONNX outputs equal); of the weights files'
other entries only those that record a resume (``resumed_from_step``) may differ, listed
under ``resume_metadata``.

Where the kills land: the reference's Snakemake log gives each rule's duration and each
stage's (data, preprocessing, pretraining, training, ensemble, export, results) place in the
run. The kills are spread over the stages (each stage once, the rest drawn in proportion to
the stages' durations), in pipeline order. Kill ``i`` waits until a job of its stage (or of a
later one) runs, then a seeded random fraction of that rule's reference duration, then kills.
Which rules were running at that moment is read from Snakemake's output and logged; a kill
whose attempt finished first is logged as missed. One ``--seed`` gives one kill plan.

Prints one JSON line: ``kills``, ``stages_hit``, ``artifacts_identical``, ``kill_log`` and the
comparison's details; exit status 1 when an artifact differs or a resume fails.

Usage::

    python bench/chaos.py                                    # config/demo.yaml, 20 kills
    python bench/chaos.py --kills 3 --configfile tests/workflow/tiny.yaml --workdir /tmp/chaos
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from hms_core.ops.resume import clear_stale_locks
from hms_core.ops.snakemake_log import parse_snakemake_log

logger = logging.getLogger("bench.chaos")

REPO = Path(__file__).resolve().parents[1]
STAGE_OF_RULE = {
    "fetch_data": "data", "validate_data": "data", "make_folds": "data",
    "preprocess_batch": "preprocessing",
    "pretrain": "pretraining", "foundation_transfer": "pretraining",
    "tune": "training", "train_fold": "training",
    "ensemble": "ensemble",
    "export_model": "export", "export_ensemble": "export",
    "results": "results", "report_figures": "results",
}
STAGES = ("data", "preprocessing", "pretraining", "training", "ensemble", "export", "results")
# Entries of a weights file that record the resume itself (pretraining's ``metrics.resumed_from_step``):
# they differ from the uninterrupted run by design, so they are reported but do not fail the check.
RESUME_KEYS = ("resumed",)
_STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")
_RULE = re.compile(r"^(?:local)?rule (\S+):$")
_JOBID = re.compile(r"^\s+jobid: (\d+)")
_FINISHED = re.compile(r"^Finished jobid: (\d+)")


def _compare_runs():
    spec = importlib.util.spec_from_file_location("bench_compare_runs", Path(__file__).with_name("compare_runs.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def snakemake_command(workdir: Path, configfile: Path, cores: int, *extra: str) -> list[str]:
    """The plain ``python -m snakemake`` call of one attempt in ``workdir``."""
    return [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
            "--configfile", str(configfile), "--cores", str(cores), *extra]


def start(workdir: Path, configfile: Path, cores: int, output: Path, *extra: str) -> subprocess.Popen:
    """Start Snakemake in its own session (so ``os.killpg`` reaches every job), output to ``output``."""
    output.parent.mkdir(parents=True, exist_ok=True)
    # unbuffered: the kill triggers read which jobs run from this output while Snakemake runs
    env = {**os.environ, "PYTHONHASHSEED": "0", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    with open(output, "w") as out:
        return subprocess.Popen(snakemake_command(workdir, configfile, cores, *extra), stdout=out,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _failure(workdir: Path, output: Path, what: str) -> RuntimeError:
    logs = "\n".join(f"== {p}\n{p.read_text(errors='replace')[-2000:]}"
                     for p in sorted(workdir.glob("logs/*/*.log")))
    return RuntimeError(f"{what} failed in {workdir}:\n{output.read_text(errors='replace')[-5000:]}\n{logs}")


def run_workflow(workdir: str | os.PathLike, configfile: str | os.PathLike, *, cores: int = 2) -> None:
    """Run the workflow to the end in ``workdir`` (no kill); raise with the logs when it fails."""
    workdir = Path(workdir)
    output = workdir / ".chaos" / "reference.out"
    proc = start(workdir, Path(configfile), cores, output)
    if proc.wait() != 0:
        raise _failure(workdir, output, "the uninterrupted run")


def job_timeline(snakemake_log: str | os.PathLike) -> list[dict[str, Any]]:
    """Every job of a finished Snakemake log: ``rule``, ``start_s``, ``end_s`` (from the first job).

    Parameters
    ----------
    snakemake_log : path-like
        ``.snakemake/log/*.snakemake.log`` of an uninterrupted run.

    Returns
    -------
    list of dict
        One entry per finished job in start order (Snakemake stamps to the second).
    """
    stamp, jobs, rule = None, {}, None
    for line in Path(snakemake_log).read_text(errors="replace").splitlines():
        if (m := _STAMP.match(line)):
            stamp = datetime.strptime(m[1], "%a %b %d %H:%M:%S %Y").timestamp()
        elif (m := _RULE.match(line)):
            rule = m[1]
        elif rule and (m := _JOBID.match(line)):
            jobs[int(m[1])] = {"rule": rule, "start": stamp, "end": None}
            rule = None
        elif (m := _FINISHED.match(line)) and int(m[1]) in jobs:
            jobs[int(m[1])]["end"] = stamp
    done = [j for j in jobs.values() if j["end"] is not None and j["rule"] in STAGE_OF_RULE]
    if not done:
        raise ValueError(f"{snakemake_log}: no finished job of a known rule; is it a finished run's log?")
    t0 = min(j["start"] for j in done)
    return sorted(({"rule": j["rule"], "start_s": j["start"] - t0, "end_s": j["end"] - t0} for j in done),
                  key=lambda j: (j["start_s"], j["rule"]))


def reference_timeline(reference: str | os.PathLike) -> list[dict[str, Any]]:
    """:func:`job_timeline` of the reference folder's first Snakemake log (the full run)."""
    logs = sorted(Path(reference, ".snakemake", "log").glob("*.snakemake.log"))
    if not logs:
        raise FileNotFoundError(f"{reference}: no .snakemake/log/*.snakemake.log; not a finished run folder")
    return job_timeline(logs[0])


def stage_order(timeline: Sequence[dict[str, Any]]) -> list[str]:
    """The stages of ``timeline`` by their first job's start (the order the run reaches them)."""
    first: dict[str, float] = {}
    for job in timeline:
        stage = STAGE_OF_RULE[job["rule"]]
        first[stage] = min(first.get(stage, job["start_s"]), job["start_s"])
    return sorted(first, key=lambda s: (first[s], STAGES.index(s)))


def plan_kills(timeline: Sequence[dict[str, Any]], n_kills: int, seed: int,
               stages: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Seeded kill plan: ``[{stage, fraction}]`` in pipeline order.

    Each stage of ``stages`` (default: every stage of the timeline) gets one kill when
    ``n_kills`` allows, the rest go to stages drawn in proportion to their reference
    duration; ``fraction`` (0.1-0.9) is the share of the running rule's duration to wait.
    """
    rng = np.random.default_rng(seed)
    length: dict[str, float] = {}
    for job in timeline:
        stage = STAGE_OF_RULE[job["rule"]]
        length[stage] = length.get(stage, 0.0) + max(job["end_s"] - job["start_s"], 1.0)
    order = stage_order(timeline)
    if stages is not None:
        unknown = sorted(set(stages) - set(order))
        if unknown:
            raise ValueError(f"stages {unknown} have no job in the reference run (it has {order})")
        order = [s for s in order if s in stages]
    if n_kills <= len(order):
        chosen = list(rng.choice(order, size=n_kills, replace=False)) if n_kills else []
    else:
        weights = np.array([length[s] for s in order])
        chosen = order + list(rng.choice(order, size=n_kills - len(order), p=weights / weights.sum()))
    chosen.sort(key=order.index)
    return [{"stage": str(s), "fraction": round(float(rng.uniform(0.1, 0.9)), 3)} for s in chosen]


def running_jobs(output: Path) -> list[str]:
    """``rule[wildcards]`` of the jobs running now, read from one attempt's Snakemake output."""
    running = parse_snakemake_log(output)["running"]
    return [r["rule"] + (f"[{r['wildcards']}]" if r["wildcards"] else "") for r in running]


def _wait(proc: subprocess.Popen, output: Path, until, poll_s: float) -> Any:
    """Poll until ``until(running rules)`` returns something truthy (returned) or ``proc`` exits (None)."""
    while proc.poll() is None:
        hit = until([job.split("[")[0] for job in running_jobs(output)])
        if hit:
            return hit
        time.sleep(poll_s)
    return None


def chaos_run(workdir: str | os.PathLike, configfile: str | os.PathLike, plan: Sequence[dict[str, Any]],
              timeline: Sequence[dict[str, Any]], *, cores: int = 2, poll_s: float = 0.1) -> list[dict[str, Any]]:
    """Run the workflow in ``workdir``, killing it as ``plan`` says, resuming until it finishes.

    Returns
    -------
    list of dict
        The kill log: per planned kill its ``stage``, ``trigger`` (the rule seen), ``delay_s``,
        ``at_s`` (since the first start), ``running`` (jobs killed), ``stages_hit``, or
        ``missed: true`` when that attempt finished first.

    Raises
    ------
    RuntimeError
        An attempt failed on its own, or the final resume did not finish cleanly.
    """
    workdir, configfile = Path(workdir), Path(configfile)
    duration, order = {}, stage_order(timeline)
    for job in timeline:
        duration[job["rule"]] = max(duration.get(job["rule"], 0.0), job["end_s"] - job["start_s"], 1.0)
    t0, attempt, kill_log = time.monotonic(), 0, []
    for i, kill in enumerate(plan):
        output = workdir / ".chaos" / f"attempt_{attempt}.out"
        proc = start(workdir, configfile, cores, output, *(["--rerun-incomplete"] if attempt else []))
        targets = set(order[order.index(kill["stage"]):])  # this stage or one the run reaches later
        trigger = _wait(proc, output, lambda rules: next(
            (r for r in rules if STAGE_OF_RULE.get(r) in targets), None), poll_s)
        delay = kill["fraction"] * duration.get(trigger, 1.0) if trigger else 0.0
        deadline = time.monotonic() + delay
        while trigger and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(min(poll_s, max(deadline - time.monotonic(), 0.0)))
        record = {"kill": i, "attempt": attempt, "stage": kill["stage"], "trigger": trigger,
                  "delay_s": round(delay, 2)}
        if proc.poll() is None:
            running = running_jobs(output)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            record.update(at_s=round(time.monotonic() - t0, 2), running=running,
                          stages_hit=sorted({STAGE_OF_RULE.get(j.split("[")[0], "?") for j in running},
                                            key=lambda s: STAGES.index(s) if s in STAGES else 99))
            logger.info("kill %d at %.1f s (%s + %.1f s): %s", i, record["at_s"], trigger, delay,
                        ", ".join(running) or "no job running")
            clear_stale_locks(workdir)
            attempt += 1
        else:
            record["missed"] = True
            logger.info("kill %d missed: attempt %d ended first (exit %d)", i, attempt, proc.returncode)
            if proc.returncode != 0:
                raise _failure(workdir, output, f"attempt {attempt}")
            kill_log.append(record)
            return kill_log
        kill_log.append(record)
    output = workdir / ".chaos" / f"attempt_{attempt}.out"
    proc = start(workdir, configfile, cores, output, "--rerun-incomplete")
    if proc.wait() != 0:
        raise _failure(workdir, output, f"the final resume (attempt {attempt})")
    return kill_log


def run_chaos(reference: str | os.PathLike, workdir: str | os.PathLike, configfile: str | os.PathLike, *,
              kills: int, seed: int, cores: int = 2, stages: Sequence[str] | None = None) -> dict[str, Any]:
    """Kill plan from ``reference``, chaos run in ``workdir``, comparison; the JSON report."""
    started = time.monotonic()
    plan = plan_kills(reference_timeline(reference), kills, seed, stages)
    logger.info("seed %d, kill plan: %s", seed, plan)
    kill_log = chaos_run(workdir, configfile, plan, reference_timeline(reference), cores=cores)
    comparison = _compare_runs().compare_runs(Path(reference), Path(workdir))
    hit = {s for k in kill_log for s in k.get("stages_hit", [])}
    resume_meta, other_meta = {}, {}
    for name, keys in comparison["metadata_diffs"].items():
        for key in keys:
            expected = any(r in part for part in key.lower().split(".") for r in RESUME_KEYS)
            (resume_meta if expected else other_meta).setdefault(name, []).append(key)
    identical = not (comparison["differs"] or comparison["missing"] or other_meta)
    return {
        "kills": sum(1 for k in kill_log if not k.get("missed")),
        "kills_planned": len(plan),
        "stages_hit": sorted(hit, key=lambda s: STAGES.index(s) if s in STAGES else 99),
        "artifacts_identical": identical,
        "seed": seed, "configfile": str(configfile), "reference": str(reference), "workdir": str(workdir),
        "checked": comparison["checked"], "differs": comparison["differs"], "missing": comparison["missing"],
        "metadata_diffs": other_meta, "resume_metadata": resume_meta, "wall_s": round(time.monotonic() - started, 1),
        "kill_log": kill_log,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20, help="SIGKILLs during the run (default 20)")
    parser.add_argument("--configfile", type=Path, default=REPO / "config" / "demo.yaml",
                        help="workflow config (default config/demo.yaml)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill plan (default 0)")
    parser.add_argument("--cores", type=int, default=2, help="Snakemake --cores (default 2)")
    parser.add_argument("--workdir", type=Path, default=REPO / "bench_runs" / "chaos",
                        help="scratch folder: reference/ and chaos/ go there (default bench_runs/chaos)")
    parser.add_argument("--reference", type=Path, default=None,
                        help="a finished uninterrupted run of the same config to compare with "
                             "(default: run one in WORKDIR/reference)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    configfile = args.configfile.resolve()
    reference = args.reference
    if reference is None:
        reference = args.workdir / "reference"
        logger.info("uninterrupted reference run in %s", reference)
        run_workflow(reference, configfile, cores=args.cores)
    chaos_dir = args.workdir / "chaos"
    if chaos_dir.exists():
        parser.error(f"{chaos_dir} exists; the chaos run needs a fresh folder")
    report = run_chaos(reference.resolve(), chaos_dir.resolve(), configfile, kills=args.kills,
                       seed=args.seed, cores=args.cores)
    print(json.dumps(report, sort_keys=True))
    return 0 if report["artifacts_identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
