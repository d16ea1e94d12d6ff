"""Fixtures of the export tests: one torch thread and the shared tiny run."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch


def _tiny_run_module():
    spec = importlib.util.spec_from_file_location("_tiny_run_loader", Path(__file__).with_name("tiny_run.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.load()


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_dataset):
    return _tiny_run_module().build(tmp_path_factory.getbasetemp() / "tiny_run", tiny_dataset)
