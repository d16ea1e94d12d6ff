"""Resolve ``config["data"]`` to a folder in the Kaggle layout: generate, download or point."""
from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import typing
from pathlib import Path
from typing import Any, Literal, Mapping

from hms_core import atomic
from hms_core.config import from_mapping
from hms_core.data.kaggle import KaggleConfig
from hms_core.data.synthetic.config import SyntheticConfig
from hms_core.data.validate import ValidationConfig
from hms_core.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

DataSource = Literal["synthetic", "kaggle", "local"]
SOURCES = typing.get_args(DataSource)
SYNTHETIC_MARKER = ".hms_synthetic.json"  # marks a folder this module generated (safe to replace)


@dataclasses.dataclass
class DataConfig:
    """Config section ``data``: where the Kaggle-layout data set comes from.

    Parameters
    ----------
    source : {"synthetic", "kaggle", "local"}
        synthetic: generate one; kaggle: download the competition with the Kaggle CLI;
        local: use ``dir`` in place (default "synthetic").
    dir : str or None
        Folder in the Kaggle layout (local), or where to download (kaggle); default None:
        data/raw in the working directory.
    synthetic : SyntheticConfig
        The built-in synthetic data set (``source: synthetic``).
    kaggle : KaggleConfig
        The Kaggle download (``source: kaggle``).
    validation : ValidationConfig
        Checks of the data set before preprocessing.
    """

    source: DataSource = "synthetic"
    dir: str | None = None
    synthetic: SyntheticConfig = dataclasses.field(default_factory=SyntheticConfig)
    kaggle: KaggleConfig = dataclasses.field(default_factory=KaggleConfig)
    validation: ValidationConfig = dataclasses.field(default_factory=ValidationConfig)

    def validate(self, path: str = "data") -> None:
        """A local source needs its folder."""
        if self.source == "local" and not self.dir:
            raise ConfigError(f"{path}.dir is required when {path}.source is 'local'")


def resolve_data(data_cfg: Mapping[str, Any], *, raw_dir: str | os.PathLike = "data/raw",
                 source_out: str | os.PathLike = "data/source.json") -> dict:
    """Make the configured data set available and record where it lies.

    Parameters
    ----------
    data_cfg : mapping
        The ``data`` config section: ``source`` (synthetic, kaggle or local), ``dir`` and
        the ``synthetic`` / ``kaggle`` sub-sections.
    raw_dir : path
        Where a generated or downloaded set goes when ``data.dir`` is not given; for
        ``local`` it becomes a link to ``data.dir``.
    source_out : path
        JSON file written atomically with ``source`` and the absolute ``dir``.
    """
    source = data_cfg["source"]
    raw_dir = Path(raw_dir)
    if source == "synthetic":
        from hms_core.data.synthetic.config import SyntheticConfig
        from hms_core.data.synthetic.writer import generate_from_config

        syn = from_mapping(SyntheticConfig, data_cfg.get("synthetic"), "data.synthetic")
        _remove_generated(raw_dir)
        with atomic.atomic_path(raw_dir) as tmp:
            generate_from_config(syn, tmp)
            atomic.write_json(tmp / SYNTHETIC_MARKER, dataclasses.asdict(syn))
        data_dir = raw_dir
    elif source == "kaggle":
        from hms_core.data import kaggle

        cfg = from_mapping(KaggleConfig, data_cfg.get("kaggle"), "data.kaggle")
        data_dir = Path(data_cfg.get("dir") or raw_dir).expanduser()
        kaggle.fetch_kaggle(data_dir, competition=cfg.competition, free_gb=cfg.free_gb)
    elif source == "local":
        if not data_cfg.get("dir"):
            raise ConfigError("data.dir is required when data.source is 'local'")
        data_dir = Path(data_cfg["dir"]).expanduser()
        if not (data_dir / "train.csv").is_file():
            raise DataError(data_dir, "not a folder in the Kaggle layout: train.csv is missing")
        _link(raw_dir, data_dir)
    else:
        raise ConfigError(f"data.source is {source!r}; allowed: {', '.join(SOURCES)}")
    record = {"source": source, "dir": str(Path(data_dir).resolve())}
    atomic.write_json(source_out, record)
    logger.info("data set (%s) at %s", source, record["dir"])
    return record


def _remove_generated(raw_dir: Path) -> None:
    if raw_dir.is_symlink():
        raw_dir.unlink()
    elif raw_dir.is_dir():
        if not (raw_dir / SYNTHETIC_MARKER).is_file():
            raise DataError(raw_dir, "exists and is not a generated synthetic set; move it away "
                            "or point data.dir at it with data.source: local")
        shutil.rmtree(raw_dir)


def _link(raw_dir: Path, data_dir: Path) -> None:
    if raw_dir.is_symlink():
        raw_dir.unlink()
    if raw_dir.exists():
        logger.info("%s exists; not linking it to %s", raw_dir, data_dir)
        return
    raw_dir.parent.mkdir(parents=True, exist_ok=True)
    raw_dir.symlink_to(data_dir.resolve(), target_is_directory=True)
