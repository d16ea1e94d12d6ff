"""``hms doctor``: check a run folder against its manifests and say what to rebuild.

What is checked, each against what recorded it:

- the data files against ``data/manifest.sha256`` (written by ``validate_data``);
- every window store ``data/processed/*.zarr`` (a store for every ``*.quarantine.json``):
  every array the store's attributes name is there with ``n_windows`` rows, every shard
  file of it exists, and every array reads in full;
- every weights file ``models/final/*.pth`` and checkpoint ``models/checkpoints/**/*.pt``
  loads with ``torch.load(weights_only=True)``;
- every artifact listed in ``training_results.json`` (ONNX models, weights, OOF frames, ...)
  has the size and sha256 recorded there.

Each damaged file is reported with the Snakemake target that rebuilds it and the command.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import sys
from pathlib import Path

from hms_core.errors import HMSError
from hms_core.hashing import sha256_file

logger = logging.getLogger(__name__)

MANIFEST = Path("data", "manifest.sha256")
SOURCE = Path("data", "source.json")
RESULTS = Path("training_results.json")
STORES = Path("data", "processed")
CHECKPOINTS = Path("models", "checkpoints")
# models/checkpoints/<job>/ -> the output of that job (see rules/common.smk checkpoint_dir)
_JOB_TARGETS = ((re.compile(r"^pretrain$"), "models/final/eeg_foundation_pretrained.pth"),
                (re.compile(r"^foundation_transfer$"), "results/foundation_transfer.json"),
                (re.compile(r"^ensemble$"), "models/final/ensemble.pth"),
                (re.compile(r"^train_(.+)_fold(\d+)$"), "models/final/{0}_fold{1}.pth"),
                (re.compile(r"^tune_(.+)_fold(\d+)$"), "models/tuning/{0}_fold{1}_params.json"))


@dataclasses.dataclass
class Finding:
    """One damaged file: ``path`` (relative to the run folder), ``problem``, the Snakemake
    ``target`` that rebuilds it and the ``command`` to run."""

    path: str
    problem: str
    target: str
    command: str


def check_store(path: str | os.PathLike) -> list[str]:
    """Problems of one window store written by :class:`hms_core.store.StoreWriter`; empty when sound.

    :func:`hms_core.store.verify_store`: the completion marker, every shard file present with
    the size it was written with, every window of every field decoded (so every CRC32C chunk
    checksum verified) and ``index.parquet`` with ``n_windows`` rows. The store's own path is
    left out of each problem (the finding names the file).
    """
    from hms_core.store import verify_store

    prefix = f"{Path(path)}: "
    return [p[len(prefix):] if p.startswith(prefix) else p for p in verify_store(path)]


def _torch_problem(path: Path) -> str | None:
    import torch

    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises RuntimeError, EOFError, UnpicklingError, ...
        size = path.stat().st_size
        return f"not loadable by torch.load(weights_only=True) ({size} bytes; {type(err).__name__}: {err})"
    return None


class Doctor:
    """Collect the findings of one run folder; :meth:`run` does every check."""

    def __init__(self, workdir: str | os.PathLike):
        self.workdir = Path(workdir)
        if not self.workdir.is_dir():
            raise HMSError(f"{self.workdir}: no such run folder")
        self.findings: list[Finding] = []
        self.checked: dict[str, int] = {}
        self.base_command = _snakemake_base(self.workdir)

    def damaged(self, path: Path | str, problem: str, target: str | None = None,
                command: str | None = None) -> None:
        rel = self._rel(path)
        for finding in self.findings:  # one finding per file, however many checks it fails
            if finding.path == rel:
                finding.problem += f"; {problem}"
                return
        target = target or rel
        command = command or f"{self.base_command} --force {target}"
        self.findings.append(Finding(rel, problem, target, command))

    def _rel(self, path: Path | str) -> str:
        path = Path(path)
        try:
            return path.relative_to(self.workdir).as_posix()
        except ValueError:
            return str(path)

    def run(self) -> list[Finding]:
        if not any((self.workdir / p).exists() for p in (MANIFEST, RESULTS, STORES, Path("models"))):
            raise HMSError(f"{self.workdir}: not a run folder (no {MANIFEST}, {RESULTS}, {STORES}/ "
                           "or models/); give the folder passed to snakemake --directory")
        self.check_data()
        self.check_stores()
        self.check_torch_files()
        self.check_artifacts()
        return self.findings

    def check_data(self) -> None:
        manifest = self.workdir / MANIFEST
        if not manifest.is_file():
            logger.info("%s missing: data files not checked", MANIFEST)
            return
        try:
            data_dir = Path(json.loads((self.workdir / SOURCE).read_text())["dir"])
        except FileNotFoundError:
            return self.damaged(SOURCE, "missing (it names the data folder of data/manifest.sha256)")
        except (OSError, ValueError, KeyError, TypeError) as err:
            return self.damaged(SOURCE, f"unreadable ({type(err).__name__}: {err})")
        try:
            lines = manifest.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as err:
            return self.damaged(MANIFEST, f"unreadable ({type(err).__name__}: {err})")
        refetch = f"{self.base_command} --force {SOURCE}"
        n = 0
        for number, line in enumerate(lines, 1):
            digest, sep, rel = line.partition("  ")
            if not sep or not re.fullmatch(r"[0-9a-f]{64}", digest):
                self.damaged(MANIFEST, f"line {number} is not '<sha256>  <path>': {line[:80]!r}",
                             target=str(MANIFEST))
                continue
            n += 1
            path = data_dir / rel
            if not path.is_file():
                self.damaged(path, f"missing (listed in {MANIFEST})", str(SOURCE), refetch)
                continue
            try:
                actual = sha256_file(path)
            except OSError as err:
                self.damaged(path, f"unreadable ({err})", str(SOURCE), refetch)
                continue
            if actual != digest:
                self.damaged(path, f"sha256 {actual[:12]}... differs from {MANIFEST} ({digest[:12]}...)",
                             str(SOURCE), refetch)
        self.checked["data_files"] = n

    def check_stores(self) -> None:
        folder = self.workdir / STORES
        stores = set(folder.glob("*.zarr")) | {q.with_name(q.name.replace(".quarantine.json", ".zarr"))
                                              for q in folder.glob("*.quarantine.json")}
        for store in sorted(stores):
            if not store.is_dir():
                self.damaged(store, "missing (its batch has a quarantine file)")
                continue
            for problem in check_store(store):
                self.damaged(store, problem)
        self.checked["stores"] = len(stores)

    def check_torch_files(self) -> None:
        weights = sorted((self.workdir / "models" / "final").glob("*.pth"))
        for path in weights:
            if (problem := _torch_problem(path)):
                self.damaged(path, problem)
        checkpoints = sorted(p for p in (self.workdir / CHECKPOINTS).rglob("*") if p.suffix in (".pt", ".pth"))
        for path in checkpoints:
            if (problem := _torch_problem(path)):
                job = path.relative_to(self.workdir / CHECKPOINTS).parts[0]
                target = _job_target(job) or "(the job that uses it)"
                self.damaged(path, problem + f"; the job of {target} would start over instead of resuming",
                             target=target, command=f"rm {path}")
        self.checked["weights_files"], self.checked["checkpoints"] = len(weights), len(checkpoints)

    def check_artifacts(self) -> None:
        results = self.workdir / RESULTS
        if not results.is_file():
            logger.info("%s missing: ONNX and other artifacts not checked against sha256", RESULTS)
            return
        try:
            artifacts = json.loads(results.read_text())["artifacts"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            return self.damaged(results, f"unreadable ({type(err).__name__}: {err})")
        for name, record in sorted(artifacts.items()):
            path = Path(name) if Path(name).is_absolute() else self.workdir / name
            # a file of the data folder (the answer key) comes back with the data
            target = self._rel(path)
            if Path(name).is_absolute() and (target == str(path) or target.startswith("data/raw/")):
                target = str(SOURCE)
            if not path.is_file():
                self.damaged(path, f"missing (listed in {RESULTS})", target)
                continue
            size = path.stat().st_size
            if size != record.get("bytes", size):
                self.damaged(path, f"{size} bytes, {RESULTS} recorded {record['bytes']} (truncated or "
                                   "rewritten)", target)
                continue
            try:
                digest = sha256_file(path)
            except OSError as err:
                self.damaged(path, f"unreadable ({err})", target)
                continue
            if digest != record.get("sha256"):
                self.damaged(path, f"sha256 differs from the one in {RESULTS}", target)
        self.checked["artifacts"] = len(artifacts)


def _job_target(job: str) -> str | None:
    for pattern, target in _JOB_TARGETS:
        if (m := pattern.match(job)):
            return target.format(*m.groups())
    return None


def _snakemake_base(workdir: Path) -> str:
    """``snakemake [-s SNAKEFILE] --directory DIR [--configfile ...]`` as the newest run was started.

    Read from the header of the newest ``.snakemake/log/*.snakemake.log`` (absolute paths);
    the Snakefile's own ``config/config.yaml`` is left out (it is always read).
    """
    command = ["snakemake"]
    logs = sorted(Path(workdir, ".snakemake", "log").glob("*.snakemake.log"))
    header = logs[-1].read_text(errors="replace")[:5000] if logs else ""
    snakefile = re.search(r"^\s+Snakefile: (.+)$", header, re.M)
    if snakefile:
        command += ["-s", snakefile[1].strip()]
    command += ["--directory", str(workdir.resolve())]
    configs = re.search(r"^\s+Config file\(s\): \[(.*)\]$", header, re.M)
    if configs:
        default = Path(snakefile[1].strip()).parent / "config" / "config.yaml" if snakefile else None
        extra = [p for p in re.findall(r"'([^']+)'", configs[1]) if default is None or Path(p) != default]
        if extra:
            command += ["--configfile", *extra]
    return " ".join(command)


def main(workdir: str | os.PathLike = ".", as_json: bool = False) -> int:
    """``hms doctor``: print the findings; 1 when anything is damaged, else 0."""
    doctor = Doctor(workdir)
    findings = doctor.run()
    if as_json:
        sys.stdout.write(json.dumps({"run": str(doctor.workdir.resolve()), "damaged": len(findings),
                                     "findings": [dataclasses.asdict(f) for f in findings],
                                     "checked": doctor.checked}) + "\n")
        return 1 if findings else 0
    checked = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in doctor.checked.items())
    lines = [f"{doctor.workdir.resolve()}: " + (f"{len(findings)} damaged" if findings else "sound")
             + f" (checked {checked})"]
    for f in findings:
        lines += [f"DAMAGED {f.path}: {f.problem}", f"  rebuild {f.target}: {f.command}"]
    sys.stdout.write("\n".join(lines) + "\n")
    return 1 if findings else 0
