"""Read the members' out-of-fold parquets and align them row by row.

Each member (model) has one OOF parquet per fold (``label_id, fold``, the six vote columns,
``logp_<class>`` and ``logp_swap_<class>``). Together a member's folds cover every labelled
row once; members are aligned on ``label_id``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from hms_core.contract import LOGP_COLUMNS, LOGP_SWAP_COLUMNS, OOF_COLUMNS, VOTE_COLUMNS
from hms_core.errors import DataError


@dataclass
class OOFSet:
    """Out-of-fold predictions of several members on the same rows.

    Attributes
    ----------
    members : tuple of str
        Member (model) names, in the order of the first axis of ``logp``.
    label_id : np.ndarray
        ``(n_rows,)`` int64, sorted.
    fold : np.ndarray
        ``(n_rows,)`` int64 outer fold of each row.
    votes : np.ndarray
        ``(n_rows, 6)`` float64 vote counts.
    logp : np.ndarray
        ``(n_members, n_rows, 6)`` float64 log-probabilities.
    logp_swap : np.ndarray
        ``(n_members, n_rows, 6)`` float64 log-probabilities of the hemisphere-swapped input.
    """

    members: tuple[str, ...]
    label_id: np.ndarray
    fold: np.ndarray
    votes: np.ndarray
    logp: np.ndarray
    logp_swap: np.ndarray

    @property
    def targets(self) -> np.ndarray:
        """Vote distributions ``(n_rows, 6)`` (votes / their sum)."""
        return self.votes / self.votes.sum(axis=1, keepdims=True)

    @property
    def n_votes(self) -> np.ndarray:
        return self.votes.sum(axis=1)

    def tta_probs(self) -> np.ndarray:
        """Per-member probabilities averaged over plain and swapped input ``(n_members, n_rows, 6)``."""
        return 0.5 * (np.exp(self.logp) + np.exp(self.logp_swap))

    def subset(self, members: Sequence[str]) -> "OOFSet":
        idx = [self.members.index(m) for m in members]
        return OOFSet(tuple(members), self.label_id, self.fold, self.votes,
                      self.logp[idx], self.logp_swap[idx])


def read_member_oof(paths: Sequence[str | os.PathLike], *, member: str) -> pd.DataFrame:
    """Concatenate one member's per-fold OOF parquets, checking columns and values.

    Raises
    ------
    DataError
        A file is missing, lacks a column, holds non-finite log-probabilities, or a label_id
        appears twice.
    """
    if not paths:
        raise DataError(member, "no out-of-fold parquet given for this member")
    frames = []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise DataError(path, f"out-of-fold predictions of member {member!r} not found")
        try:
            df = pd.read_parquet(path)
        except Exception as err:  # pyarrow raises several types for a corrupt file
            raise DataError(path, f"cannot read parquet: {err}") from err
        missing = [c for c in OOF_COLUMNS if c not in df.columns]
        if missing:
            raise DataError(path, f"missing column(s) {', '.join(missing)}")
        logp = df[list(LOGP_COLUMNS + LOGP_SWAP_COLUMNS)].to_numpy(np.float64)
        if not np.isfinite(logp).all() or (logp > 1e-6).any():
            raise DataError(path, "log-probabilities must be finite and <= 0")
        frames.append(df[list(OOF_COLUMNS)])
    oof = pd.concat(frames, ignore_index=True)
    dup = oof["label_id"].duplicated()
    if dup.any():
        raise DataError(paths[0], f"label_id {int(oof.loc[dup, 'label_id'].iloc[0])} appears in more "
                                  f"than one OOF row of member {member!r}")
    return oof.sort_values("label_id", ignore_index=True)


def load_oof(oof_paths: Mapping[str, Sequence[str | os.PathLike]]) -> OOFSet:
    """Read every member's OOF parquets and align them on label_id.

    Parameters
    ----------
    oof_paths : Mapping
        ``{member name: [oof parquet of fold 0, fold 1, ...]}``.

    Raises
    ------
    DataError
        Members cover different rows, or disagree on a row's fold or votes.
    """
    if not oof_paths:
        raise DataError("oof", "no ensemble members given")
    members = tuple(oof_paths)
    frames = {m: read_member_oof(oof_paths[m], member=m) for m in members}
    ref_name = members[0]
    ref = frames[ref_name]
    for m in members[1:]:
        df = frames[m]
        if len(df) != len(ref) or not np.array_equal(df["label_id"].to_numpy(), ref["label_id"].to_numpy()):
            raise DataError(oof_paths[m][0], f"member {m!r} covers other rows than {ref_name!r} "
                                             f"({len(df)} vs {len(ref)} rows)")
        if not np.array_equal(df["fold"].to_numpy(), ref["fold"].to_numpy()):
            raise DataError(oof_paths[m][0], f"member {m!r} puts rows in other folds than {ref_name!r}; "
                                             "all members must use the same folds.csv")
        if not np.array_equal(df[list(VOTE_COLUMNS)].to_numpy(), ref[list(VOTE_COLUMNS)].to_numpy()):
            raise DataError(oof_paths[m][0], f"member {m!r} has other votes than {ref_name!r}")
    votes = ref[list(VOTE_COLUMNS)].to_numpy(np.float64)
    if (votes.sum(axis=1) <= 0).any():
        raise DataError(oof_paths[ref_name][0], "a row has no votes")
    return OOFSet(
        members=members,
        label_id=ref["label_id"].to_numpy(np.int64),
        fold=ref["fold"].to_numpy(np.int64),
        votes=votes,
        logp=np.stack([frames[m][list(LOGP_COLUMNS)].to_numpy(np.float64) for m in members]),
        logp_swap=np.stack([frames[m][list(LOGP_SWAP_COLUMNS)].to_numpy(np.float64) for m in members]),
    )
