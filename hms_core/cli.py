"""The ``hms`` command: one verb per operator task.

Each verb's work lives in the module it names; this file only parses arguments.
Modules are imported when their verb runs, so ``hms --help`` stays fast.
"""
from __future__ import annotations

import argparse
import logging
import sys

from hms_core.errors import HMSError


def _synth(args: argparse.Namespace) -> int:
    from hms_core.data import synthetic

    if args.preset is None and (args.fraction != 1.0 or args.metadata_only):
        raise HMSError("--fraction and --metadata-only need --preset full")
    synthetic.main(out=args.out, patients=args.patients, seed=args.seed, preset=args.preset,
                   fraction=args.fraction, metadata_only=args.metadata_only)
    return 0


def _predict(args: argparse.Namespace) -> int:
    from hms_core.inference import predict

    return predict.main(data_dir=args.data, out_csv=args.out, model_path=args.model,
                        uncertainty=args.uncertainty)


def _annotate(args: argparse.Namespace) -> int:
    from hms_core.inference import annotate

    return annotate.main(recording=args.recording, out_dir=args.out, model_path=args.model,
                         step_s=args.step_s, threshold=args.threshold,
                         interpolate_missing=args.interpolate_missing)


def _status(args: argparse.Namespace) -> int:
    from hms_core.ops import monitor

    return monitor.print_status(workdir=args.directory, host=args.host, as_json=args.json)


def _monitor(args: argparse.Namespace) -> int:
    from hms_core.ops import monitor

    return monitor.run_monitor(workdir=args.directory, host=args.host, interval_s=args.interval)


def _logs(args: argparse.Namespace) -> int:
    from hms_core.ops import logs

    return logs.show_logs(workdir=args.directory, rule=args.rule, follow=args.follow, host=args.host)


def _backup(args: argparse.Namespace) -> int:
    from hms_core.ops import backup

    return backup.main(workdir=args.directory, action=args.action, name=args.name)


def _resume(args: argparse.Namespace) -> int:
    from hms_core.ops import resume

    return resume.main(workdir=args.directory, host=args.host, snakemake_args=args.snakemake_args)


def _deploy(args: argparse.Namespace) -> int:
    from hms_core.ops import remote

    return remote.deploy(host=args.host, key=args.key, remote_dir=args.dir, port=args.port,
                         snakemake_args=args.snakemake_args)


def _doctor(args: argparse.Namespace) -> int:
    from hms_core.ops import doctor

    return doctor.main(workdir=args.run_dir, as_json=args.json)


def _curves(args: argparse.Namespace) -> int:
    import json

    from hms_core.train import curves

    result = curves.best_length(args.weights, metric=args.metric, mode=args.mode)
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hms", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = verbs.add_parser("synth", help="write a synthetic data set in the Kaggle layout")
    p.add_argument("out", help="output folder")
    p.add_argument("--patients", type=int, default=20, help="number of patients (default 20)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--preset", choices=("full",), default=None,
                   help="full: the real HMS counts (106,800 rows, 17,089 EEGs, 11,138 spectrograms, "
                        "1,950 patients); --patients is then ignored")
    p.add_argument("--fraction", type=float, default=1.0,
                   help="with --preset: a patient-stratified share of the patients, in (0, 1] (default 1)")
    p.add_argument("--metadata-only", action="store_true",
                   help="with --preset: write train.csv, test.csv, sample_submission.csv only")
    p.set_defaults(func=_synth)

    p = verbs.add_parser("predict", help="write a Kaggle submission from a test folder")
    p.add_argument("--data", required=True, help="folder with test.csv, test_eegs/, test_spectrograms/")
    p.add_argument("--out", required=True, help="submission CSV to write")
    p.add_argument("--model", default="models/onnx/ensemble.onnx", help="ONNX ensemble")
    p.add_argument("--uncertainty", action="store_true",
                   help="add entropy, member_spread and the conformal prediction_set, set_size columns")
    p.set_defaults(func=_predict)

    p = verbs.add_parser("annotate", help="scan an EEG recording (EDF, BDF, FIF, ...) and write annotations")
    p.add_argument("recording", help="any file mne.io.read_raw reads")
    p.add_argument("--model", default="models/onnx/ensemble.onnx", help="ONNX ensemble")
    p.add_argument("--out", default="annotations", help="output folder (default annotations)")
    p.add_argument("--step-s", type=float, default=10.0, help="seconds between scored segments (default 10)")
    p.add_argument("--threshold", type=float, default=0.5,
                   help="event when a non-Other class leads with at least this probability (default 0.5)")
    p.add_argument("--interpolate-missing", action="store_true",
                   help="interpolate up to 2 missing EEG channels (spherical splines)")
    p.set_defaults(func=_annotate)

    def add_remote(p: argparse.ArgumentParser) -> None:
        p.add_argument("--directory", "-d", default=None,
                       help="the run's working directory (default: . here, the deploy folder on --host)")
        p.add_argument("--host", default=None, help="user@host of a remote run (over SSH)")

    p = verbs.add_parser("status", help="print the run's status once")
    add_remote(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_status)

    p = verbs.add_parser("monitor", help="live dashboard of the run (Ctrl-C to leave)")
    add_remote(p)
    p.add_argument("--interval", type=float, default=2.0, help="refresh period in s")
    p.set_defaults(func=_monitor)

    p = verbs.add_parser("logs", help="show rule logs")
    add_remote(p)
    p.add_argument("rule", nargs="?", default=None, help="rule name (default: all)")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    p.set_defaults(func=_logs)

    p = verbs.add_parser("backup", help="list, create or restore backups")
    p.add_argument("--directory", "-d", default=".", help="the run's working directory")
    p.add_argument("action", choices=("list", "create", "restore"))
    p.add_argument("name", nargs="?", default=None, help="backup to restore")
    p.set_defaults(func=_backup)

    p = verbs.add_parser("resume", help="clear a stale lock and continue an interrupted run")
    add_remote(p)
    p.add_argument("snakemake_args", nargs=argparse.REMAINDER, help="extra snakemake arguments")
    p.set_defaults(func=_resume)

    p = verbs.add_parser("doctor", help="check a run folder against its manifests; what to rebuild")
    p.add_argument("run_dir", nargs="?", default=".", help="the run's working directory (default .)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_doctor)

    p = verbs.add_parser("curves", help="training length where the mean CV learning curve is best")
    p.add_argument("weights", nargs="+", help="one model's train_fold weights files "
                   "(models/final/<model>_fold*.pth)")
    p.add_argument("--metric", default="oof_kl", help="history key (default oof_kl)")
    p.add_argument("--mode", choices=("min", "max"), default="min", help="best is min or max")
    p.set_defaults(func=_curves)

    p = verbs.add_parser("deploy", help="copy the project to a host and start the run there")
    p.add_argument("--host", required=True, help="user@host")
    p.add_argument("--key", default=None, help="SSH private key")
    p.add_argument("--port", type=int, default=22, help="SSH port")
    p.add_argument("--dir", default="hms", help="remote project folder")
    p.add_argument("snakemake_args", nargs=argparse.REMAINDER, help="extra snakemake arguments")
    p.set_defaults(func=_deploy)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # `hms resume --cores 1` and `hms deploy --host h --cores 1`: unknown options go to snakemake.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if args.verb not in ("resume", "deploy"):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.snakemake_args = [*(args.snakemake_args or []), *extra]
    if getattr(args, "directory", "") is None:
        args.directory = "."  # on --host, the ops modules map "." to the deploy folder
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except HMSError as err:
        print(f"hms {args.verb}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
