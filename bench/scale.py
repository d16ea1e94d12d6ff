"""Scale rehearsal: what a full HMS run costs, from a sample run here and full-size metadata.

Two parts, each stage in its own spawned process (so its peak RSS is its own):

1. The real stages on a patient-stratified sample of ``hms synth --preset full``
   (``--fraction``, default 0.002): synth, validate (parquet footers), folds, preprocess (the
   full config's preprocessing, ICA included, one batch), train (one fold of the tiny test
   model, 1 epoch, CPU) and ONNX export of that fold.
2. The metadata-only stages at full size (106,800 rows, no signals): synth
   ``--metadata-only``, validate (CSV checks + a missing-file check per parquet), folds,
   batch assignment into 32 batches and ``snakemake -n`` of the whole DAG (32 batches x 2
   models x 5 folds).

Extrapolation to the full data set on 16 cores: a sample stage's measured seconds x the
ratio of its unit (sessions for synth, files for validate, windows for preprocess) x the
threads it used here / the cores it gets there (synth: 1 process; validate: 4 threads;
preprocess: 16 cores). Training and export are GPU work: not extrapolated from the CPU
(see bench/train.py and bench/gpu.sh). Bytes: raw EEG and spectrogram bytes scale with the
seconds the labelled windows need (sum over files of last offset + window); store bytes
with windows; model bytes are estimated from the full models' parameter counts (fp32).

Prints a table, then one JSON line.

    python bench/scale.py                    # here: --fraction 0.002, a few minutes
    python bench/scale.py --fraction 0.02    # a real box
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FULL_CORES = 16
FULL_BATCHES, FULL_FOLDS = 32, 5
# The sample's training: the tiny test models (tests/workflow/tiny.yaml), no foundation encoder.
TRAIN_OVERLAY = {"training": {"steps": 0, "epochs": 1, "batch_size": 8, "precision": "fp32",
                              "channels_last": False, "compile": False, "num_workers": 0,
                              "two_stage": {"enabled": False}},
                 "models": {"resnet1d_gru": {"foundation_mode": None, "widths": [8, 16], "strides": [4, 4],
                                             "stem_width": 8, "gru_hidden": 8}}}


# ------------------------------------------------------------------------------- stages
def _stage(name: str, work: str, arg: dict) -> dict:
    """Run stage ``name`` in this (child) process; return its facts."""
    import logging

    logging.basicConfig(level=logging.WARNING)
    work = Path(work)
    if name == "synth":
        from hms_core.data.synthetic.preset import generate_preset

        s = generate_preset(work / arg["dir"], fraction=arg["fraction"], seed=0, n_test=4,
                            metadata_only=arg["metadata_only"], save_answer_key=False)
        return {"units": s["n_spectrograms"], "rows": s["n_rows"], "recordings": s["n_recordings"]}
    if name == "validate":
        from hms_core.data.validate import validate_dataset

        r = validate_dataset(work / arg["dir"], manifest_out=work / f"{arg['dir']}.sha256",
                             report_out=work / f"{arg['dir']}.json", on_bad="skip", threads=arg["threads"])
        return {"units": r["counts"]["train_recordings"] + r["counts"]["train_spectrograms"],
                "n_bad": r["n_bad_recordings"]}
    if name == "folds":
        from hms_core.data.folds import write_folds

        from hms_core.data.io import read_train_csv

        # a small sample may have fewer patients than folds; then one fold per patient
        n_folds = min(FULL_FOLDS, read_train_csv(work / arg["dir"] / "train.csv")["patient_id"].nunique())
        folds = write_folds(work / arg["dir"] / "train.csv", work / f"{arg['dir']}_folds.csv",
                            {"n_folds": n_folds, "seed": 42})
        return {"units": len(folds), "n_folds": n_folds}
    if name == "batches":
        from hms_core.data.io import read_train_csv
        from hms_core.preprocess import assign_batches

        batches = assign_batches(read_train_csv(work / arg["dir"] / "train.csv"), FULL_BATCHES)
        return {"units": sum(len(b) for b in batches.values()), "batches": len(batches)}
    if name == "preprocess":
        from hms_core.config.sections import load_config
        from hms_core.data.io import read_train_csv
        from hms_core.preprocess import preprocess_batch
        from hms_core.workflow import set_torch_threads

        set_torch_threads(arg["threads"])
        cfg = load_config()["preprocessing"]
        train = read_train_csv(work / "sample" / "train.csv")
        preprocess_batch(work / "sample", train, sorted(train["eeg_id"].unique()), work / "store.zarr", cfg,
                         threads=arg["threads"], quarantine_out=work / "quarantine.json")
        return {"units": len(train), "store_bytes": _du(work / "store.zarr")}
    if name == "train":
        import shutil as sh

        from hms_core.config.sections import load_config
        from hms_core.train.fold import train_fold
        from hms_core.workflow import set_torch_threads

        set_torch_threads(arg["threads"])
        sh.copy(work / "sample_folds.csv", work / "folds.csv")
        cfg = load_config(overrides=TRAIN_OVERLAY)
        train_fold([work / "store.zarr"], work / "folds.csv", "resnet1d_gru", 0,
                   {"training": cfg["training"], "models": {"resnet1d_gru": cfg["models"]["resnet1d_gru"]}},
                   weights_out=work / "resnet1d_gru_fold0.pth", oof_out=work / "oof_fold0.parquet",
                   checkpoint_dir=work / "checkpoints")
        return {"units": 1, "checkpoint_bytes": _du(work / "checkpoints"),
                "weights_bytes": _du(work / "resnet1d_gru_fold0.pth")}
    if name == "export":
        from hms_core.config.sections import load_config
        from hms_core.export.onnx import export_model
        from hms_core.workflow import set_torch_threads

        set_torch_threads(arg["threads"])
        export_model([work / "resnet1d_gru_fold0.pth"], work / "resnet1d_gru.onnx",
                     store_paths=[work / "store.zarr"], cfg=load_config()["export"],
                     parity_out=work / "parity.json", name="resnet1d_gru")
        return {"units": 1, "onnx_bytes": _du(work / "resnet1d_gru.onnx")}
    if name == "model_sizes":
        from hms_core.config.sections import load_config
        from hms_core.models import create_model
        from hms_core.train.fold import resolve_model_config

        cfg = load_config(overrides={"models": {"efficientnet": {"pretrained": False}}})
        out = {}
        for model in ("resnet1d_gru", "efficientnet"):
            _, kwargs, _ = resolve_model_config(cfg, model)
            kwargs.pop("foundation_mode", None)
            out[model] = sum(p.numel() for p in create_model(model, **kwargs).parameters())
        return {"units": 2, "params": out}
    raise ValueError(f"unknown stage {name!r}")


def _du(path: Path) -> int:
    """Bytes of the files under ``path`` (or of the file)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _child(name, work, arg, queue):
    t0 = time.perf_counter()
    try:
        facts = _stage(name, work, arg)
        error = None
    except Exception as err:  # reported in the table, the other stages still run
        facts, error = {}, f"{type(err).__name__}: {err}"
    queue.put({"seconds": round(time.perf_counter() - t0, 2), **facts, "error": error,
               "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)})


def run_stage(name: str, work: Path, **arg) -> dict:
    """Run one stage in a fresh spawned process; its seconds, peak RSS and facts."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(name, str(work), arg, queue))
    proc.start()
    result = queue.get()
    proc.join()
    print(f"  {name:<11} {result['seconds']:>8.1f} s  {result['peak_rss_mb']:>7.0f} MB"
          + (f"  ERROR {result['error']}" if result["error"] else ""), file=sys.stderr, flush=True)
    return result


def dry_run_dag(work: Path, data_dir: Path) -> dict:
    """``snakemake -n`` of the full DAG (32 batches x 2 models x 5 folds) over ``data_dir``."""
    overlay = work / "full_dag.yaml"
    overlay.write_text(json.dumps({"data": {"source": "local", "dir": str(data_dir)},
                                   "preprocessing": {"n_batches": FULL_BATCHES},
                                   "folds": {"n_folds": FULL_FOLDS},
                                   "models": {"qeeg": {"enabled": False}}}))  # the two networks
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [sys.executable, "-m", "snakemake", "-n", "--snakefile", str(REPO / "Snakefile"),
           "--directory", str(work / "dag_run"), "--configfile", str(overlay), "--cores", str(FULL_CORES),
           "--resources", "gpu=1"]
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, env=env)
        _, status, usage = os.wait4(proc.pid, 0)  # this process tree's own peak RSS
        seconds = time.perf_counter() - t0
        returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    jobs = {}
    in_table = False
    for line in stdout.splitlines():  # the "Job stats:" table: "rule   count"
        parts = line.split()
        if parts[:2] == ["job", "count"]:
            in_table = True
        elif in_table and len(parts) == 2 and parts[1].isdigit():
            jobs[parts[0]] = int(parts[1])
        elif in_table and jobs and not parts:
            break
    return {"seconds": round(seconds, 2), "rc": returncode, "jobs": jobs,
            "error": None if returncode == 0 else stderr[-2000:],
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}


# ---------------------------------------------------------------------------- figures
def needed_seconds(data_dir: Path) -> dict:
    """Seconds of EEG and spectrogram that the labelled windows need (sum over files)."""
    from hms_core.contract import SPEC_WINDOW_S, WINDOW_S
    from hms_core.data.io import read_train_csv

    train = read_train_csv(data_dir / "train.csv")
    eeg = (train.groupby("eeg_id")["eeg_label_offset_seconds"].max() + WINDOW_S).sum()
    spec = (train.groupby("spectrogram_id")["spectrogram_label_offset_seconds"].max() + SPEC_WINDOW_S).sum()
    return {"eeg_s": float(eeg), "spec_s": float(spec), "rows": int(len(train)),
            "recordings": int(train["eeg_id"].nunique()), "spectrograms": int(train["spectrogram_id"].nunique())}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fraction", type=float, default=0.002, help="sample of the full preset (default 0.002)")
    p.add_argument("--threads", type=int, default=2, help="threads per sample stage here (default 2)")
    p.add_argument("--work", default=None, help="scratch folder (default: a temporary one, removed)")
    p.add_argument("--skip-full-metadata", action="store_true", help="sample stages only")
    args = p.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="hms_scale_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        return _run(args, work)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


def _run(args, work: Path) -> dict:
    from hms_core.data.synthetic.preset import FULL

    started = time.perf_counter()
    print(f"sample stages (fraction {args.fraction}, {args.threads} threads) in {work}", file=sys.stderr)
    s = {"synth": run_stage("synth", work, dir="sample", fraction=args.fraction, metadata_only=False)}
    s["validate"] = run_stage("validate", work, dir="sample", threads=args.threads)
    s["folds"] = run_stage("folds", work, dir="sample")
    s["preprocess"] = run_stage("preprocess", work, threads=args.threads)
    s["train"] = run_stage("train", work, threads=args.threads)
    s["export"] = run_stage("export", work, threads=args.threads)
    sizes = run_stage("model_sizes", work)
    sample = needed_seconds(work / "sample")
    raw_eeg = _du(work / "sample" / "train_eegs")
    raw_spec = _du(work / "sample" / "train_spectrograms")

    m = {}
    if not args.skip_full_metadata:
        print("metadata-only stages at full size", file=sys.stderr)
        m["synth"] = run_stage("synth", work, dir="full_meta", fraction=1.0, metadata_only=True)
        m["validate"] = run_stage("validate", work, dir="full_meta", threads=args.threads)
        m["folds"] = run_stage("folds", work, dir="full_meta")
        m["batches"] = run_stage("batches", work, dir="full_meta")
        m["dag_dry_run"] = dry_run_dag(work, work / "full_meta")
        print(f"  {'dag -n':<11} {m['dag_dry_run']['seconds']:>8.1f} s", file=sys.stderr)
        full = needed_seconds(work / "full_meta")
    else:
        full = None

    # extrapolation: the unit ratio sample -> full, then the parallelism here -> there
    ratio = {"synth": FULL.spectrograms / sample["spectrograms"],
             "validate": (FULL.recordings + FULL.spectrograms) / (sample["recordings"] + sample["spectrograms"]),
             "preprocess": FULL.rows / sample["rows"]}
    speedup_there = {"synth": 1, "validate": 4 / args.threads, "preprocess": FULL_CORES / args.threads}
    rows = []
    for name, r in s.items():
        extrapolated = (round(r["seconds"] * ratio[name] / speedup_there[name], 0)
                        if name in ratio and not r["error"] else None)
        rows.append({"stage": f"sample/{name}", "seconds_here": r["seconds"], "peak_rss_mb": r["peak_rss_mb"],
                     "full_16core_s": extrapolated, "error": r["error"],
                     "rule": {"synth": "x sessions ratio, 1 process",
                              "validate": "x parquet-files ratio, 4 threads",
                              "preprocess": f"x windows ratio x {args.threads}/{FULL_CORES} cores",
                              "folds": "see full-metadata/folds"}.get(
                                  name, "GPU stage: not extrapolated (bench/gpu.sh)")})
    for name, r in m.items():
        rows.append({"stage": f"full-metadata/{name}", "seconds_here": r["seconds"],
                     "peak_rss_mb": r["peak_rss_mb"], "full_16core_s": r["seconds"],
                     "error": r["error"], "rule": "measured at full size",
                     "facts": {k: v for k, v in r.items() if k not in ("seconds", "peak_rss_mb", "error")}})

    params = sizes.get("params", {})
    disk = {"sample_raw_eeg_bytes": raw_eeg, "sample_raw_spec_bytes": raw_spec,
            "sample_store_bytes": s["preprocess"].get("store_bytes"),
            "store_bytes_per_window": (round(s["preprocess"]["store_bytes"] / sample["rows"])
                                       if s["preprocess"].get("store_bytes") else None),
            "sample_onnx_bytes_tiny": s["export"].get("onnx_bytes"),
            "sample_checkpoint_bytes_tiny": s["train"].get("checkpoint_bytes"),
            "full_model_params": params}
    if full:
        disk["full_raw_eeg_bytes_extrapolated"] = round(raw_eeg * full["eeg_s"] / sample["eeg_s"])
        disk["full_raw_spec_bytes_extrapolated"] = round(raw_spec * full["spec_s"] / sample["spec_s"])
    if disk["store_bytes_per_window"]:
        disk["full_store_bytes_extrapolated"] = disk["store_bytes_per_window"] * FULL.rows
    if params:  # fp32 weights; a checkpoint adds AdamW's two moments and the EMA copy
        n_nets = FULL_FOLDS
        disk["full_weights_bytes_estimated"] = {k: 4 * v * n_nets for k, v in params.items()}
        disk["full_checkpoint_bytes_estimated"] = {k: 4 * v * 4 * n_nets for k, v in params.items()}
        disk["full_onnx_bytes_estimated"] = {k: 4 * v * n_nets for k, v in params.items()}
    result = {"bench": "scale", "fraction": args.fraction, "threads_here": args.threads,
              "cpu_count_here": os.cpu_count(), "loadavg_1min_at_end": round(os.getloadavg()[0], 2),
              "sample": sample, "full": full, "stages": rows, "disk": disk,
              "dag_jobs": m.get("dag_dry_run", {}).get("jobs"),
              "seconds": round(time.perf_counter() - started, 1)}
    _print_table(rows, disk)
    print(json.dumps(result))
    return result


def _print_table(rows: list[dict], disk: dict) -> None:
    print(f"{'stage':<28} {'here s':>8} {'peak MB':>8} {'full 16-core s':>15}  rule")
    for r in rows:
        full = "-" if r["full_16core_s"] is None else f"{r['full_16core_s']:.0f}"
        print(f"{r['stage']:<28} {r['seconds_here']:>8.1f} {r['peak_rss_mb']:>8.0f} {full:>15}  {r['rule']}"
              + (f"  ERROR {r['error'][:80]}" if r["error"] else ""))
    for key, value in disk.items():
        print(f"{key:<34} {value}")


if __name__ == "__main__":
    main()
