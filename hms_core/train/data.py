"""Datasets for the engine: generic in-memory arrays and labelled windows from a store.

A *window source* is any object with the :class:`hms_core.store.WindowStore` protocol:
``.index`` (a DataFrame with ``label_id, eeg_id, patient_id`` and the six vote columns,
one row per window) and ``.read(rows, fields) -> dict[str, float32 array]`` (``rows``:
positions in ``.index``). :class:`InMemorySource` implements it over arrays (tests, and
caching a small store in RAM); :class:`WindowDataset` turns a source into batches.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from hms_core import contract
from hms_core.errors import ConfigError


def identity_collate(batch: Any) -> Any:
    """Collate for datasets whose ``__getitems__`` already returns a batch."""
    return batch


class ArrayDataset:
    """Rows of equally long arrays as a map-style dataset with batched reads.

    Parameters
    ----------
    **arrays : array-like
        Named arrays sharing their first dimension; a batch is a dict of tensors.
    """

    collate_fn = staticmethod(identity_collate)

    def __init__(self, **arrays: Any):
        if not arrays:
            raise ValueError("ArrayDataset needs at least one array")
        self.arrays = {k: torch.as_tensor(np.asarray(v)) for k, v in arrays.items()}
        lengths = {k: len(v) for k, v in self.arrays.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"arrays differ in length: {lengths}")
        self._n = next(iter(lengths.values()))

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[i] for k, v in self.arrays.items()}

    def __getitems__(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        return {k: v[idx] for k, v in self.arrays.items()}


class InMemorySource:
    """A window source held in memory, with the ``WindowStore`` ``.index``/``.read`` protocol.

    Parameters
    ----------
    index : pd.DataFrame
        One row per window: ``label_id, eeg_id, patient_id`` and the vote columns.
    fields : mapping of str to np.ndarray
        Per-window arrays, first dimension ``len(index)`` (e.g. ``chains (n, 18, 10000)``, uV).
    """

    def __init__(self, index: pd.DataFrame, fields: Mapping[str, np.ndarray]):
        self.index = index.reset_index(drop=True)
        self.fields = {k: np.asarray(v) for k, v in fields.items()}
        for name, arr in self.fields.items():
            if len(arr) != len(self.index):
                raise ValueError(f"field {name!r} has {len(arr)} rows, index has {len(self.index)}")

    @classmethod
    def from_source(cls, source: Any, rows: np.ndarray, fields: Sequence[str], *,
                    chunk: int = 64) -> "InMemorySource":
        """Copy ``rows`` of ``source`` (fields kept as float16 to halve the memory)."""
        rows = np.asarray(rows, dtype=np.int64)
        parts: dict[str, list[np.ndarray]] = {f: [] for f in fields}
        for start in range(0, len(rows), chunk):
            got = source.read(rows[start:start + chunk], list(fields))
            for f in fields:
                parts[f].append(np.asarray(got[f], dtype=np.float16))
        arrays = {f: np.concatenate(p) if p else np.zeros((0,), np.float16)
                  for f, p in parts.items()}
        return cls(source.index.iloc[rows], arrays)

    def __len__(self) -> int:
        return len(self.index)

    def read(self, rows: np.ndarray, fields: Sequence[str]) -> dict[str, np.ndarray]:
        rows = np.asarray(rows, dtype=np.int64)
        missing = [f for f in fields if f not in self.fields]
        if missing:
            raise KeyError(f"fields not in this source: {missing}; have {sorted(self.fields)}")
        return {f: self.fields[f][rows].astype(np.float32) for f in fields}


class RowSubset:
    """Some rows of a window source, as a window source of their own (a view: nothing copied).

    Parameters
    ----------
    source : WindowStore-like
    rows : np.ndarray
        Positions in ``source.index``; row ``i`` of the subset is ``rows[i]`` of ``source``.
    """

    def __init__(self, source: Any, rows: np.ndarray):
        self.source = source
        self.rows = np.asarray(rows, dtype=np.int64)
        self.index = source.index.iloc[self.rows].reset_index(drop=True)

    def __len__(self) -> int:
        return len(self.rows)

    def read(self, rows: np.ndarray, fields: Sequence[str]) -> dict[str, np.ndarray]:
        return self.source.read(self.rows[np.asarray(rows, dtype=np.int64)], fields)


def vote_targets(index: pd.DataFrame) -> np.ndarray:
    """Vote distributions ``(n, 6)`` float32 from the vote columns of ``index``."""
    votes = index[list(contract.VOTE_COLUMNS)].to_numpy(dtype=np.float64)
    if (votes.sum(axis=1) <= 0).any():
        raise ConfigError("windows without votes cannot be trained on (vote sum 0)")
    return contract.votes_to_targets(votes).astype(np.float32)


def train_prior(index: pd.DataFrame) -> np.ndarray:
    """The train prior: the mean vote distribution of the rows of ``index``, shape ``(6,)``.

    The constant prediction a model must beat. :func:`hms_core.train.fold.train_fold` scores
    it on the held-out fold (``prior_kl_all``, from the fold's training windows) and
    :mod:`hms_core.results` per out-of-fold row (from the rows of the other folds); both call
    this function, so the two agree.

    Parameters
    ----------
    index : pandas.DataFrame
        Rows with the six vote columns (a window index or an out-of-fold frame).

    Returns
    -------
    np.ndarray
        ``(6,)`` float64 class probabilities summing to 1.
    """
    return vote_targets(index).mean(axis=0, dtype=np.float64)


class WindowDataset:
    """Labelled windows of a source as batches ``{field: (B, ...), "target": (B, 6), "n_votes": (B,)}``.

    Parameters
    ----------
    source : WindowStore-like
    rows : np.ndarray
        Positions in ``source.index`` making up this dataset.
    fields : sequence of str
        Store fields the model consumes (its ``input_fields``).
    """

    collate_fn = staticmethod(identity_collate)

    def __init__(self, source: Any, rows: np.ndarray, fields: Sequence[str]):
        self.source = source
        self.rows = np.asarray(rows, dtype=np.int64)
        self.fields = tuple(fields)
        index = source.index.iloc[self.rows]
        self.targets = torch.from_numpy(vote_targets(index))
        self.n_votes = torch.from_numpy(
            index[list(contract.VOTE_COLUMNS)].to_numpy(dtype=np.float32).sum(axis=1))

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.__getitems__([i]).items()}

    def __getitems__(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        idx = np.asarray(list(indices), dtype=np.int64)
        # Sources return the rows in the order asked (a store reads each window once, sorted).
        got = self.source.read(self.rows[idx], self.fields)
        batch = {f: torch.from_numpy(np.ascontiguousarray(got[f], dtype=np.float32)) for f in self.fields}
        tidx = torch.from_numpy(idx)
        batch["target"] = self.targets[tidx]
        batch["n_votes"] = self.n_votes[tidx]
        return batch

    def high_vote_positions(self, min_votes: int) -> np.ndarray:
        """Dataset positions of windows with at least ``min_votes`` votes."""
        return np.flatnonzero(self.n_votes.numpy() >= min_votes)
