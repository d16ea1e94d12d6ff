"""torchrun entry point of one fold's training: every rank runs ``fold.train_fold``.

Usage (normally through :func:`hms_core.train.distributed.launch_torchrun`)::

    python -m torch.distributed.run --standalone --nproc_per_node 2 \\
        -m hms_core.train.fold_main --config cfg.json --stores a.zarr b.zarr \\
        --folds data/folds.csv --model resnet1d_gru --fold 0 \\
        --weights-out w.pt --oof-out oof.parquet --checkpoint-dir models/checkpoints/job

``--config`` is a JSON file holding the ``cfg`` mapping of ``train_fold`` (``training``
and ``models``); :func:`fold_args` writes it and returns the argument list.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

from hms_core import atomic
from hms_core.errors import ConfigError, HMSError
from hms_core.train import distributed

logger = logging.getLogger(__name__)


def fold_args(store_paths: Sequence[str | os.PathLike], folds_csv: str | os.PathLike,
              model_name: str, fold: int, cfg: Mapping[str, Any], *,
              weights_out: str | os.PathLike, oof_out: str | os.PathLike,
              checkpoint_dir: str | os.PathLike, config_path: str | os.PathLike,
              foundation_path: str | os.PathLike | None = None, threads: int = 1,
              status_path: str | os.PathLike | None = None) -> list[str]:
    """Write ``cfg`` to ``config_path`` (JSON, atomic) and return this module's arguments.

    The parameters are those of :func:`hms_core.train.fold.train_fold`; ``threads`` is the
    torch thread count of each rank.
    """
    atomic.write_json(config_path, dict(cfg))
    args = ["--config", str(config_path), "--stores", *[str(p) for p in store_paths],
            "--folds", str(folds_csv), "--model", model_name, "--fold", str(int(fold)),
            "--weights-out", str(weights_out), "--oof-out", str(oof_out),
            "--checkpoint-dir", str(checkpoint_dir), "--threads", str(int(threads))]
    if foundation_path is not None:
        args += ["--foundation", str(foundation_path)]
    if status_path is not None:
        args += ["--status", str(status_path)]
    return args


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m hms_core.train.fold_main",
                                description="Train one model on one fold (one torchrun rank).")
    p.add_argument("--config", required=True, help="JSON file with 'training' and 'models'")
    p.add_argument("--stores", nargs="+", required=True, help="batch stores (*.zarr)")
    p.add_argument("--folds", required=True, help="data/folds.csv")
    p.add_argument("--model", required=True)
    p.add_argument("--fold", type=int, required=True)
    p.add_argument("--weights-out", required=True)
    p.add_argument("--oof-out", required=True)
    p.add_argument("--checkpoint-dir", required=True)
    p.add_argument("--foundation", default=None)
    p.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    p.add_argument("--status", default=None, help="status/run.json (rank 0 writes it)")
    return p


def _read_config(path: str) -> dict[str, Any]:
    try:
        cfg = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the fold config: {exc}") from exc
    if not isinstance(cfg, dict) or "models" not in cfg:
        raise ConfigError(f"{path}: the fold config must be a mapping with 'training' and 'models'")
    return cfg


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the arguments, join the process group and train; returns the exit status."""
    args = build_parser().parse_args(argv)
    rank = os.environ.get("RANK", "0")
    logging.basicConfig(level=logging.INFO if rank == "0" else logging.WARNING,
                        format=f"%(asctime)s rank{rank} %(levelname)s %(name)s: %(message)s")
    from hms_core.train.fold import train_fold
    from hms_core.workflow import set_torch_threads

    set_torch_threads(args.threads)
    try:
        cfg = _read_config(args.config)
        train_fold(args.stores, args.folds, args.model, args.fold, cfg,
                   weights_out=args.weights_out, oof_out=args.oof_out,
                   checkpoint_dir=args.checkpoint_dir, foundation_path=args.foundation,
                   status_path=args.status)
    except HMSError as err:
        logger.error("%s", err)
        return 2
    finally:
        distributed.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
