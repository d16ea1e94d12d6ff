"""``hms doctor`` on a copy of the real tiny workflow run: sound, then each kind of damage."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from hms_core.cli import main

pytestmark = pytest.mark.slow  # needs the session's tiny workflow run


@pytest.fixture()
def run(tiny_workflow_run: Path, tmp_path: Path) -> Path:
    """A private copy of the run (its data folder too), free to damage."""
    copy = tmp_path / "run"
    shutil.copytree(tiny_workflow_run, copy, symlinks=True)
    source = copy / "data" / "source.json"
    record = json.loads(source.read_text())
    record["dir"] = str(copy / Path(record["dir"]).relative_to(tiny_workflow_run))
    source.write_text(json.dumps(record))
    return copy


def doctor(capsys, *args: str) -> tuple[int, str]:
    code = main(["doctor", *args])
    out = capsys.readouterr()
    return code, out.out + out.err


def flip_bytes(path: Path, at: int, n: int = 8) -> None:
    data = bytearray(path.read_bytes())
    data[at:at + n] = bytes(b ^ 0xFF for b in data[at:at + n])
    path.write_bytes(bytes(data))


def test_a_sound_run_exits_0(run: Path, capsys, monkeypatch):
    monkeypatch.chdir(run)  # the default folder is the current one
    code, out = doctor(capsys)
    assert code == 0, out
    assert "sound" in out and "DAMAGED" not in out
    code, out = doctor(capsys, str(run), "--json")
    report = json.loads(out)
    assert code == 0 and report["damaged"] == 0
    checked = report["checked"]
    assert checked["data_files"] > 10 and checked["stores"] == 1 and checked["weights_files"] >= 6
    assert checked["checkpoints"] > 0 and checked["artifacts"] > 10


def _delete_shard(run: Path) -> Path:
    shard = run / "data/processed/batch_0000.zarr/chains/c/1/0/0"
    shard.unlink()
    return run / "data/processed/batch_0000.zarr"


def _empty_checkpoint(run: Path) -> Path:
    ckpt = run / "models/checkpoints/pretrain/last.pt"
    ckpt.write_bytes(b"")
    return ckpt


def _truncate_onnx(run: Path) -> Path:
    onnx = run / "models/onnx/ensemble.onnx"
    with open(onnx, "r+b") as f:
        f.truncate(onnx.stat().st_size // 2)
    return onnx


def _empty_weights(run: Path) -> Path:
    weights = run / "models/final/qeeg_fold1.pth"
    weights.write_bytes(b"")
    return weights


def _change_data_file(run: Path) -> Path:
    eeg = sorted((run / "data/raw/train_eegs").glob("*.parquet"))[0]
    flip_bytes(eeg, eeg.stat().st_size // 2)
    return eeg


def _delete_data_file(run: Path) -> Path:
    spec = sorted((run / "data/raw/train_spectrograms").glob("*.parquet"))[0]
    spec.unlink()
    return spec


@pytest.mark.parametrize(("damage", "problem", "target"), [
    (_delete_shard, "(chains/c/1/0/0): file missing", "--force data/processed/batch_0000.zarr"),
    (_empty_checkpoint, "0 bytes", "rm "),
    (_truncate_onnx, "truncated", "--force models/onnx/ensemble.onnx"),
    (_empty_weights, "not loadable by torch.load", "--force models/final/qeeg_fold1.pth"),
    (_change_data_file, "differs from data/manifest.sha256", "--force data/source.json"),
    (_delete_data_file, "missing (listed in data/manifest.sha256)", "--force data/source.json"),
])
def test_each_kind_of_damage_is_found_with_its_target(run: Path, capsys, damage, problem, target):
    damaged = damage(run)
    code, out = doctor(capsys, str(run))
    assert code == 1, out
    name = damaged.relative_to(run).as_posix()
    lines = [line for line in out.splitlines() if line.startswith(f"DAMAGED {name}:")]
    assert len(lines) == 1 and problem in lines[0], out
    rebuild = out.splitlines()[out.splitlines().index(lines[0]) + 1]
    assert rebuild.strip().startswith("rebuild ") and target in rebuild, rebuild
    assert out.count("DAMAGED") == 1, out  # nothing else reported


def test_the_command_repeats_the_runs_snakefile_and_config(run: Path, capsys):
    _truncate_onnx(run)
    report = json.loads(doctor(capsys, str(run), "--json")[1])
    (finding,) = report["findings"]
    assert finding["target"] == "models/onnx/ensemble.onnx"
    command = finding["command"].split()
    assert command[0] == "snakemake" and command[command.index("--directory") + 1] == str(run.resolve())
    assert Path(command[command.index("-s") + 1]).name == "Snakefile"
    assert Path(command[command.index("--configfile") + 1]).name == "tiny.yaml"


def test_flipped_bytes_in_a_chunk_are_found(run: Path, capsys):
    shard = run / "data/processed/batch_0000.zarr/chains/c/0/0/0"
    flip_bytes(shard, 1000)  # inside the first chunk's compressed bytes, not the shard index
    code, out = doctor(capsys, str(run))
    assert code == 1 and "DAMAGED data/processed/batch_0000.zarr:" in out, out


def test_a_folder_that_is_not_a_run_is_an_error(tmp_path: Path, capsys):
    code, out = doctor(capsys, str(tmp_path))
    assert code == 2 and "not a run folder" in out and str(tmp_path) in out
    code, out = doctor(capsys, str(tmp_path / "absent"))
    assert code == 2 and "no such run folder" in out
