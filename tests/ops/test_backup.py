"""Backups: content, atomic rotation, verified restore, refusal of a corrupted backup."""
from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
import threading
import time
from pathlib import Path

import pytest

from hms_core.cli import main as hms
from hms_core.errors import DataError, HMSError
from hms_core.ops import backup

STATE = {
    "models/checkpoints/train_a_fold0/last.pt": b"checkpoint-epoch-3",
    "models/final/a_fold0.pth": b"weights",
    "oof/a_fold0.parquet": b"oof",
    "status/run.json": b'{"jobs": {}}',
    "data/manifest.sha256": b"abc  train.csv\n",
    "data/validation.json": b"{}",
    "data/folds.csv": b"label_id,fold\n1,0\n",
    "training_results.json": b'{"kl": 0.5}',
}
NOT_BACKED_UP = {
    "data/raw/train.csv": b"raw",
    "data/processed/batch_0000.zarr/zarr.json": b"{}",
    "status/run.lock": b"",
}


def _write(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)


def _snapshot(root: Path) -> dict[str, str]:
    """Checksums of the workdir's files, without backups/ and lock files (recreated on use)."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))
            if p.is_file() and "backups" not in p.parts and p.suffix != ".lock"}


@pytest.fixture
def run_dir(workdir: Path) -> Path:
    _write(workdir, {**STATE, **NOT_BACKED_UP})
    return workdir


def test_backup_content_and_manifest(run_dir):
    path = backup.create_backup(run_dir, keep=3)
    files = {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()}
    assert files == set(STATE) | {backup.MANIFEST, backup.INFO}
    assert backup.verify_backup(path) == {rel: hashlib.sha256(data).hexdigest() for rel, data in STATE.items()}
    assert not list((run_dir / backup.BACKUP_DIR).glob(".*.tmp"))  # no temp dir left behind
    info = json.loads((path / backup.INFO).read_text())
    assert info["files"] == len(STATE) and info["bytes"] == sum(map(len, STATE.values()))


def test_nothing_to_back_up(workdir):
    assert backup.create_backup(workdir) is None
    assert backup.list_backups(workdir) == []


def test_rotation_keeps_newest(run_dir):
    made = [backup.create_backup(run_dir, keep=2) for _ in range(4)]
    assert len({p.name for p in made}) == 4  # same second: distinct names
    assert [b["name"] for b in backup.list_backups(run_dir)] == [made[2].name, made[3].name]
    assert not made[0].exists() and not made[1].exists()


def test_restore_puts_state_back(run_dir):
    before = _snapshot(run_dir)
    saved = backup.create_backup(run_dir)
    (run_dir / "models/checkpoints/train_a_fold0/last.pt").write_bytes(b"corrupted by a crash")
    (run_dir / "data/folds.csv").unlink()
    (run_dir / "models/checkpoints/train_b_fold1").mkdir()
    (run_dir / "models/checkpoints/train_b_fold1/last.pt").write_bytes(b"newer")
    changed = _snapshot(run_dir)

    safety = backup.restore_backup(run_dir, saved.name)
    assert _snapshot(run_dir) == before
    assert safety is not None and safety.name.endswith(backup.PRE_RESTORE)
    # the state before the restore is kept, and is itself restorable
    assert {k: v for k, v in changed.items() if k in STATE or k.startswith("models/")} == \
        {p: h for p, h in backup.verify_backup(safety).items()}


def test_restore_refuses_corrupted_backup(run_dir, capsys):
    saved = backup.create_backup(run_dir)
    (saved / "models/final/a_fold0.pth").write_bytes(b"weightz")  # bit rot in the backup
    (run_dir / "training_results.json").write_bytes(b"newer results")
    before = _snapshot(run_dir)
    with pytest.raises(DataError, match=r"models/final/a_fold0.pth: checksum mismatch.*nothing was restored"):
        backup.restore_backup(run_dir, saved.name)
    assert _snapshot(run_dir) == before
    assert [b["name"] for b in backup.list_backups(run_dir)] == [saved.name]  # no safety copy either
    # the CLI reports the same, with exit status 2
    assert hms(["backup", "-d", str(run_dir), "restore", saved.name]) == 2
    assert "a_fold0.pth: checksum mismatch" in capsys.readouterr().err


def test_cli_list_create_restore(run_dir, capsys):
    assert hms(["backup", "-d", str(run_dir), "create"]) == 0
    name = Path(capsys.readouterr().out.strip()).name
    assert hms(["backup", "-d", str(run_dir), "list"]) == 0
    assert name in capsys.readouterr().out
    (run_dir / "data/validation.json").write_bytes(b"changed")
    assert hms(["backup", "-d", str(run_dir), "restore", name]) == 0
    assert (run_dir / "data/validation.json").read_bytes() == STATE["data/validation.json"]
    assert hms(["backup", "-d", str(run_dir), "restore", "20990101T000000Z"]) == 2
    assert "no backup '20990101T000000Z'" in capsys.readouterr().err


def test_maybe_and_periodic_backups(run_dir):
    first = backup.maybe_backup(run_dir, interval_min=30, keep=5)
    assert first is not None
    assert backup.maybe_backup(run_dir, interval_min=30, keep=5) is None  # newest is fresh
    handle = backup.start_periodic_backups(run_dir, interval_min=0.2 / 60, keep=3, check_s=0.05)
    try:
        deadline = time.monotonic() + 10
        while (first.name in [b["name"] for b in backup.list_backups(run_dir)]
               and time.monotonic() < deadline):
            time.sleep(0.05)
    finally:
        handle.stop()
    assert not handle._thread.is_alive()
    names = [b["name"] for b in backup.list_backups(run_dir)]
    assert len(names) == 3 and first.name not in names  # rotated while running


def test_pre_restore_backups_are_never_rotated_away(run_dir):
    saved = backup.create_backup(run_dir, keep=2)
    (run_dir / "training_results.json").write_bytes(b"the newest work")
    first_safety = backup.restore_backup(run_dir, saved.name)
    for _ in range(6):
        backup.restore_backup(run_dir, saved.name)
    names = [b["name"] for b in backup.list_backups(run_dir)]
    assert len([n for n in names if n.endswith(backup.PRE_RESTORE)]) == 7 and first_safety.name in names
    assert (first_safety / "training_results.json").read_bytes() == b"the newest work"


def test_restore_copies_only_the_files_of_the_manifest(run_dir):
    saved = backup.create_backup(run_dir)
    (saved / "models/final/injected.pth").write_bytes(b"not in the manifest")
    backup.restore_backup(run_dir, saved.name)
    assert not (run_dir / "models/final/injected.pth").exists()
    assert (run_dir / "models/final/a_fold0.pth").read_bytes() == STATE["models/final/a_fold0.pth"]


def test_restore_waits_for_the_backup_lock(run_dir):
    saved = backup.create_backup(run_dir)
    (run_dir / "training_results.json").write_bytes(b"newer results")
    before = _snapshot(run_dir)
    outcome = {}

    def restore():
        try:
            backup.restore_backup(run_dir, saved.name)
        except HMSError as err:
            outcome["error"] = str(err)

    with open(run_dir / backup.BACKUP_DIR / ".lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        worker = threading.Thread(target=restore)
        worker.start()
        time.sleep(1.0)
        shutil.rmtree(saved)  # a rotation by the lock's holder
    worker.join(30)
    assert "no backup" in outcome.get("error", "") and _snapshot(run_dir) == before


def test_restore_into_a_symlinked_checkpoints_folder(run_dir, tmp_path):
    scratch = tmp_path / "scratch" / "checkpoints"
    shutil.move(run_dir / "models/checkpoints", scratch)
    (run_dir / "models/checkpoints").symlink_to(scratch, target_is_directory=True)
    saved = backup.create_backup(run_dir)
    (scratch / "train_a_fold0/last.pt").write_bytes(b"corrupted by a crash")
    backup.restore_backup(run_dir, saved.name)
    assert (run_dir / "models/checkpoints").is_symlink()
    assert (scratch / "train_a_fold0/last.pt").read_bytes() == STATE["models/checkpoints/train_a_fold0/last.pt"]


def test_temporaries_of_a_killed_backup_are_removed_at_the_next_backup(run_dir):
    root = run_dir / backup.BACKUP_DIR
    stale = root / ".20260101T000000Z.k2j4_x9a.tmp"
    (stale / "models").mkdir(parents=True)
    (stale / "models" / "half.pth").write_bytes(b"half copied")
    (root / "notes.txt").write_text("not ours")
    backup.create_backup(run_dir)
    assert not stale.exists() and (root / "notes.txt").read_text() == "not ours"
