"""Shared fixtures for the whole test suite."""
from __future__ import annotations

from pathlib import Path

import pytest

TINY_PATIENTS = 6
TINY_SEED = 0


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """A small synthetic data set in the Kaggle layout, generated once per test session.

    6 patients, 8 EEG recordings in 6 sessions (two spectrograms serve two recordings
    each), 33 labelled rows, 2 test recordings; with ``answer_key/``. Returns the folder (a ``pathlib.Path``). Treat it as read-only:
    copy it before changing files.
    """
    from hms_core.data.synthetic import generate_dataset

    out = tmp_path_factory.mktemp("tiny_dataset") / "raw"
    generate_dataset(out, n_patients=TINY_PATIENTS, seed=TINY_SEED, recordings_per_patient=(1, 2),
                     sub_windows=(1, 6), n_test=2, two_eeg_fraction=0.5)
    return out


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_dataset):
    """A real tiny run on ``tiny_dataset`` (store, 2 models x 2 folds, ensemble, ONNX), built once."""
    import importlib.util

    import torch

    loader = importlib.util.spec_from_file_location(
        "_tiny_run_loader", Path(__file__).parent / "export" / "tiny_run.py")
    module = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(module)
    torch.set_num_threads(1)
    return module.load().build(tmp_path_factory.getbasetemp() / "tiny_run", tiny_dataset)


@pytest.fixture(scope="session")
def tiny_workflow_run(tmp_path_factory) -> Path:
    """``tests/workflow/tiny.yaml`` run to the end with Snakemake (every rule, 2 cores), once.

    Shared by the workflow, chaos and doctor tests. Tests may re-run rules in it (the
    result must stay what the workflow writes) but must damage only a copy.
    """
    from bench_loader import load_bench

    workdir = tmp_path_factory.mktemp("hms_run")
    load_bench("chaos").run_workflow(workdir, Path(__file__).parent / "workflow" / "tiny.yaml", cores=2)
    return workdir
