"""Process setup for the entry points: a Snakemake job's log and threads, a torchrun rank's threads.

Workflow scripts stay a few lines long::

    from hms_core.workflow import rule_context
    with rule_context(snakemake) as smk:
        do_the_work(smk.input.x, smk.output.y, **smk.params.section)
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import sys
import traceback
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def rule_context(smk: Any) -> Iterator[Any]:
    """Send logging, warnings and stderr (progress bars) of a rule to its ``log:`` file.

    Sets torch's thread count to the rule's ``threads``. An exception is written to the
    log with its traceback, then re-raised so Snakemake marks the job failed.
    """
    log_path = Path(smk.log[0])
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w", buffering=1) as log_file:
        handler = logging.StreamHandler(log_file)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger()
        root.handlers[:] = [handler]
        root.setLevel(logging.INFO)
        logging.captureWarnings(True)
        old_stderr = sys.stderr
        sys.stderr = log_file
        try:
            set_torch_threads(int(getattr(smk, "threads", 1) or 1))
            yield smk
        except BaseException:
            log_file.write(traceback.format_exc())
            raise
        finally:
            sys.stderr = old_stderr
            root.removeHandler(handler)


def set_torch_threads(threads: int) -> None:
    """Use ``threads`` (at least 1) torch intra-op CPU threads in this process.

    The one place a job's thread count is set: :func:`rule_context` for a Snakemake job,
    :mod:`hms_core.train.fold_main` for each torchrun rank. Library functions leave it alone.
    """
    import torch

    torch.set_num_threads(max(1, int(threads)))


def data_dir(source_json: str) -> Path:
    """The Kaggle-layout folder recorded by the ``fetch_data`` rule."""
    return Path(json.loads(Path(source_json).read_text())["dir"])


@dataclasses.dataclass
class ComputeConfig:
    """Config section ``compute``: how jobs share the machine.

    Parameters
    ----------
    gpus_per_job : int
        GPUs a training job asks for (Snakemake resource ``gpu``); 0 on a CPU-only machine
        lets training jobs run side by side (default 1).
    preprocess_threads : int
        Threads of one preprocessing job, one per batch (default 4).
    train_threads : int
        Threads of one training, pretraining, ensemble or export job (default 8).
    """

    gpus_per_job: int = dataclasses.field(default=1, metadata={"minimum": 0})
    preprocess_threads: int = dataclasses.field(default=4, metadata={"minimum": 1})
    train_threads: int = dataclasses.field(default=8, metadata={"minimum": 1})
