"""Training noise of the demo's models: OOF KL over several training seeds, as one JSON line.

Trains every enabled model of ``--configfile`` (and the ensemble) once per seed and reports,
per model and for the deployed ensemble, the mean, standard deviation (ddof 1), min and max of
the out-of-fold KL on all rows and on rows with >= 10 votes, the per-seed values, and the share
of the learnable gap closed (``gap_to_floor`` of ``training_results.json``).

What a seed changes: what a practitioner's seed changes, i.e. ``training.seed`` (every
model's, including a per-model ``models.<name>.training.seed``), ``pretrain.seed``,
``transfer.seed`` and ``ensemble.meta_learner.seed``. What it does not change: the data set
(``data.synthetic.seed``) and the folds (``folds.seed``), so the spread is training noise.
Seed 0 leaves every default seed as it is, so its run is the plain demo.

How: the first seed runs the whole workflow in ``<workdir>/seed<s>``. Every other seed gets a
fresh folder whose ``data/`` (raw data, validation, folds, preprocessing stores) is a
hard-linked copy of the first seed's, and runs with ``--rerun-triggers mtime``: the shared data
stay as they are, while the foundation encoder, every model's weights and OOF predictions, the
ensemble and the exports are absent there and so are trained with that seed. The script checks
afterwards that no weights file is the same in two seeds. The foundation transfer study is
switched off (it changes no model or ensemble figure and costs time).

Usage::

    python bench/quality.py                       # config/demo.yaml, seeds 0 1 2, 2 cores
    python bench/quality.py --seeds 0 1 --cores 4 --workdir /tmp/quality
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

REPO = Path(__file__).resolve().parents[1]
RESULTS = "training_results.json"
SHARED = "data"  # what every seed reuses from the first seed's folder
logger = logging.getLogger("bench.quality")


def seeded_config(base: Mapping[str, Any], seed: int) -> dict[str, Any]:
    """``base`` with every training seed set to ``seed``; data and fold seeds untouched.

    Parameters
    ----------
    base : mapping
        The config as read from ``--configfile`` (merged by Snakemake over config.yaml).
    seed : int
        The training seed.

    Returns
    -------
    dict
        A new config mapping.
    """
    cfg = copy.deepcopy(dict(base))
    for section in ("training", "pretrain", "transfer"):
        cfg.setdefault(section, {})
        cfg[section]["seed"] = int(seed)
    for name, entry in (cfg.get("models") or {}).items():
        if isinstance(entry, dict) and isinstance(entry.get("training"), dict) and "seed" in entry["training"]:
            entry["training"]["seed"] = int(seed)
    cfg.setdefault("ensemble", {}).setdefault("meta_learner", {})
    cfg["ensemble"]["meta_learner"]["seed"] = int(seed)
    cfg["transfer"]["enabled"] = False
    return cfg


def summarise(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean, standard deviation (ddof 1; None for one value), min, max and the values."""
    finite = [float(v) for v in values if isinstance(v, (int, float))]
    if not finite:
        return {"mean": None, "std": None, "min": None, "max": None, "per_seed": list(values)}
    return {"mean": statistics.fmean(finite), "std": statistics.stdev(finite) if len(finite) > 1 else None,
            "min": min(finite), "max": max(finite), "per_seed": list(values)}


def figures(results: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Per model and for the ensemble: OOF KL (all, >= 10 votes) and the gap figures of one run."""
    table = (results.get("gap_to_floor") or {}).get("table") or {}
    out = {}
    for name, entry in table.items():
        out[name] = {"kl_all": entry["all"]["model_kl"], "kl_high_vote": entry["high_vote"]["model_kl"],
                     "gap_closed_all": entry["all"]["gap_closed"],
                     "gap_closed_high_vote": entry["high_vote"]["gap_closed"],
                     "prior_kl_all": entry["all"]["prior_kl"], "prior_kl_high_vote": entry["high_vote"]["prior_kl"],
                     "floor_kl_all": entry["all"]["floor_kl"], "floor_kl_high_vote": entry["high_vote"]["floor_kl"]}
    return out


def aggregate(per_seed: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
    """Statistics over seeds of :func:`figures`; prior and floor (the same in every seed) once."""
    seeds = sorted(per_seed)
    figs = {s: figures(per_seed[s]) for s in seeds}
    names = list(dict.fromkeys(n for s in seeds for n in figs[s]))
    out: dict[str, Any] = {}
    for name in names:
        rows = [figs[s].get(name, {}) for s in seeds]
        out[name] = {key: summarise([r.get(key) for r in rows])
                     for key in ("kl_all", "kl_high_vote", "gap_closed_all", "gap_closed_high_vote")}
        for key in ("prior_kl_all", "prior_kl_high_vote", "floor_kl_all", "floor_kl_high_vote"):
            out[name][key] = rows[0].get(key)
    return out


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_seeds_trained_apart(run_dirs: Mapping[int, Path]) -> None:
    """Raise when one weights file is byte-identical in two seeds' folders (reused, not trained)."""
    seen: dict[str, tuple[int, str]] = {}
    for seed, run in run_dirs.items():
        for path in sorted((run / "models" / "final").glob("*.pth")):
            digest = _sha256(path)
            if digest in seen:
                other = seen[digest]
                raise RuntimeError(f"{path} of seed {seed} is identical to {other[1]} of seed {other[0]}: "
                                   "the seed did not change training")
            seen[digest] = (seed, path.name)


def _share_data(first: Path, run: Path) -> None:
    """A fresh ``run`` whose ``data/`` is a hard-linked copy of ``first``'s (mtimes kept)."""
    if run.exists():
        shutil.rmtree(run)
    run.mkdir(parents=True)
    subprocess.run(["cp", "-al", str(first / SHARED), str(run / SHARED)], check=True)
    # data/source.json names the data folder by absolute path: point it at this run's copy,
    # as a new file (not through the hard link) with the old mtime, so nothing downstream reruns.
    source = run / SHARED / "source.json"
    record = json.loads(source.read_text())
    stat = source.stat()
    if Path(record["dir"]).resolve() == (first / SHARED / "raw").resolve():
        record["dir"] = str((run / SHARED / "raw").resolve())
    source.unlink()
    source.write_text(json.dumps(record))
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def run_seed(run: Path, cfg: Mapping[str, Any], cores: int, *, mtime_only: bool) -> float:
    """Run the workflow up to ``training_results.json`` in ``run``; returns the wall time (s)."""
    run.mkdir(parents=True, exist_ok=True)
    config_path = run / "bench_config.yaml"
    config_path.write_text(yaml.safe_dump(dict(cfg), sort_keys=False))
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
           "--directory", str(run), "--configfile", str(config_path), "--cores", str(cores), RESULTS]
    if mtime_only:
        cmd += ["--rerun-triggers", "mtime"]
    log = run / "bench_snakemake.log"
    logger.info("seed run in %s (log %s)", run, log)
    t0 = time.time()
    with open(log, "w") as fh:
        done = subprocess.run(cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise RuntimeError(f"snakemake failed in {run} (exit {done.returncode}); see {log}")
    return time.time() - t0


def _commit() -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()

    return {"commit": git("rev-parse", "HEAD") or None,
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configfile", default=str(REPO / "config" / "demo.yaml"))
    parser.add_argument("--workdir", default=str(REPO / "bench_runs" / "quality"))
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args(argv)
    if len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds must be distinct, got {args.seeds}")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")

    base = yaml.safe_load(Path(args.configfile).read_text()) or {}
    workdir = Path(args.workdir).resolve()
    runs = {s: workdir / f"seed{s}" for s in args.seeds}
    first = args.seeds[0]
    wall = {}
    for seed in args.seeds:
        if seed != first:
            _share_data(runs[first], runs[seed])
        wall[seed] = run_seed(runs[seed], seeded_config(base, seed), args.cores, mtime_only=seed != first)
    check_seeds_trained_apart(runs)
    per_seed = {s: json.loads((runs[s] / RESULTS).read_text()) for s in args.seeds}
    out = {
        "bench": "quality",
        "configfile": str(args.configfile),
        **_commit(),
        "seeds": args.seeds,
        "seed_keys": ["training.seed", "models.<name>.training.seed (where set)", "pretrain.seed",
                      "transfer.seed", "ensemble.meta_learner.seed"],
        "fixed": {"data.synthetic.seed": (base.get("data") or {}).get("synthetic", {}).get("seed"),
                  "folds.seed": (base.get("folds") or {}).get("seed", "config.yaml default")},
        "answer_key": (per_seed[first].get("gap_to_floor") or {}).get("answer_key") is not None,
        "std": "sample standard deviation over seeds (ddof 1)",
        "wall_s": {str(s): round(w, 1) for s, w in wall.items()},
        "results": aggregate(per_seed),
    }
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
