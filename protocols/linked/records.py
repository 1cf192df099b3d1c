"""Local step of a data holder: clean keys, resolve duplicates, encode cells, shuffle.

Everything is vectorized (Arrow compute, numpy) except casefolding of non-ASCII keys. Error
messages name datasets, columns and the problem, never values and never counts (a count is this
node's exact, unsuppressed figure); the counts go to the node's own log at WARNING.
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from jointstats.errors import DataError
from jointstats.protocols.linked import fuzzy
from jointstats.protocols.linked.job import LinkedJob, Side

log = logging.getLogger(__name__)
WEIGHT_SCALE = 1_000_000  # weights travel as integers in millionths
MAX_WEIGHT_TOTAL = 1 << 62  # scaled weight total; keeps sums below 2^64 (see wire.py)
MAX_RECORDS = (1 << 31) - 1  # index lists travel as uint32


@dataclass
class Records:
    """One side's records after cleaning, in a fresh secret order (index i or j of §5.2)."""

    keys: pa.Array | None  # normalized keys (strings), one per record; None with fuzzy linkage
    cells: np.ndarray  # int64 cell index of the side's `by` combination, in [0, width)
    weights: np.ndarray | None  # uint64 weights in millionths (right side with `weight`)
    seconds: float  # time spent here
    read: int = 0  # records in the dataset
    empty_keys: int = 0  # dropped: key empty after normalization
    duplicates: int = 0  # dropped: key repeated (duplicates = "first")
    fields: list[pa.Array] | None = None  # fuzzy: normalized linkage fields (null = missing)

    def __len__(self) -> int:
        return len(self.cells)


def normalize_keys(keys: pa.Array, steps: tuple[str, ...]) -> pa.Array:
    """Apply the job's normalizations in the fixed order NFKC, casefold, strip."""
    if "nfkc" in steps:
        keys = pc.utf8_normalize(keys, form="NFKC")
    if "casefold" in steps:
        keys = _casefold(keys)
    if "strip" in steps:
        keys = pc.utf8_trim_whitespace(keys)
    return keys


def _casefold(keys: pa.Array) -> pa.Array:
    """str.casefold: Arrow's lower() is identical on ASCII; Python handles the other keys."""
    lowered = pc.utf8_lower(keys)
    ascii_only = pc.fill_null(pc.string_is_ascii(keys), True).to_numpy(zero_copy_only=False)
    special = np.flatnonzero(~ascii_only)
    if not len(special):
        return lowered
    values = lowered.to_pylist()
    original = keys.take(pa.array(special)).to_pylist()
    for index, text in zip(special.tolist(), original, strict=True):
        values[index] = text.casefold()
    return pa.array(values, type=pa.string())


def _first_occurrences(keys: pa.Array) -> np.ndarray:
    """Positions (ascending, i.e. file order) of the first record of each distinct key."""
    table = pa.table({"k": keys, "pos": pa.array(np.arange(len(keys), dtype=np.int64))})
    firsts = table.group_by("k").aggregate([("pos", "min")])["pos_min"].to_numpy()
    return np.sort(firsts)


def _cells(job: LinkedJob, side: Side, table: pa.Table, dataset: str) -> np.ndarray:
    cells = np.zeros(table.num_rows, dtype=np.int64)
    problems = []
    for column, domain in zip(side.by, job.cell_domains(side), strict=True):
        values = table[column].combine_chunks()
        declared = domain[:-1] if job.other else domain
        index = pc.index_in(values, value_set=pa.array(declared, type=pa.string()))
        if job.other:
            index = pc.if_else(
                pc.is_valid(values),
                pc.fill_null(index, len(declared)),
                pa.scalar(None, index.type),
            )
        if index.null_count:
            log.warning(
                "dataset %s, column %s: %d values outside the domain",
                dataset, column, index.null_count,
            )  # fmt: skip
            problems.append(f"column {column}: values outside the domain")
        index = pc.fill_null(index, 0).to_numpy(zero_copy_only=False).astype(np.int64)
        cells = cells * len(domain) + index
    if problems:
        hint = "declare them in [domains] or set `other = true`"
        raise DataError(f"dataset {dataset}: {'; '.join(problems)} ({hint})")
    return cells


def _weights(side: Side, table: pa.Table, dataset: str) -> np.ndarray:
    assert side.weight is not None
    raw = table[side.weight].combine_chunks()
    try:  # Arrow parses clean numbers fast; pandas tells good from bad values otherwise
        values = pc.cast(raw, pa.float64()).to_numpy(zero_copy_only=False)
    except pa.ArrowInvalid:
        parsed = pd.to_numeric(raw.to_pandas(), errors="coerce")
        values = parsed.to_numpy(dtype=np.float64, na_value=np.nan)
    bad = int(np.count_nonzero(~(np.isfinite(values) & (values >= 0))))
    if bad:
        log.warning("dataset %s, column %s: %d bad weights", dataset, side.weight, bad)
        raise DataError(
            f"dataset {dataset}, column {side.weight}: weights that are empty, not a number, "
            "negative or infinite"
        )
    scaled = np.rint(values * WEIGHT_SCALE)
    if scaled.sum() >= MAX_WEIGHT_TOTAL:
        raise DataError(f"dataset {dataset}, column {side.weight}: the weights' total is too large")
    return scaled.astype(np.uint64)


def prepare_fuzzy(job: LinkedJob, side: Side, table: pa.Table, started: float) -> Records:
    """Fuzzy linkage: normalize each linkage field (bad values become missing evidence), keep
    every record (1:1 assignment at H replaces duplicate resolution), shuffle."""
    name = "left" if side is job.left else "right"
    fields = []
    for field, column in zip(job.linkage.fields, side.link, strict=True):
        values = table[column].combine_chunks()
        normalized = fuzzy.normalize_column(values, fuzzy.normalizer(field, name))
        missing = normalized.null_count
        if missing:
            log.info("dataset %s, column %s: %d values missing or unusable", side.dataset,
                     column, missing)  # fmt: skip
        fields.append(normalized)
    cells = _cells(job, side, table, side.dataset)
    weights = _weights(side, table, side.dataset) if side.weight else None
    order = np.random.default_rng(secrets.randbits(128)).permutation(len(cells))
    taken = pa.array(order)
    return Records(
        None,
        cells[order],
        weights[order] if weights is not None else None,
        time.perf_counter() - started,
        table.num_rows,
        fields=[f.take(taken) for f in fields],
    )


def prepare(job: LinkedJob, side: Side, node: str, sources: dict[str, Any]) -> Records:
    started = time.perf_counter()
    if side.dataset not in sources:
        raise DataError(f"node {node} does not serve dataset {side.dataset!r}")
    dataset = side.dataset
    # filters and bands run in the engine: rows outside `where` never reach Python
    table = sources[dataset].read_text(side.columns, side.where, side.bins)
    read = table.num_rows
    if table.num_rows > MAX_RECORDS:
        raise DataError(f"dataset {dataset}: more than {MAX_RECORDS} records")
    if job.linkage.fuzzy:
        return prepare_fuzzy(job, side, table, started)
    assert side.key is not None
    keys = normalize_keys(table[side.key].combine_chunks(), side.normalize)
    present = pc.fill_null(pc.greater(pc.utf8_length(keys), 0), False)
    empty = table.num_rows - pc.sum(present).as_py() if table.num_rows else 0
    table, keys = table.filter(present), keys.filter(present)
    firsts = _first_occurrences(keys)
    duplicates = len(keys) - len(firsts)
    if duplicates and side.duplicates == "error":
        log.warning("dataset %s, key column %s: %d duplicates", dataset, side.key, duplicates)
        raise DataError(
            f"dataset {dataset}, key column {side.key}: records repeat the key of an earlier "
            'record; remove them or set duplicates = "first" for this side'
        )
    if duplicates:
        table, keys = table.take(pa.array(firsts)), keys.take(pa.array(firsts))
    cells = _cells(job, side, table, dataset)
    weights = _weights(side, table, dataset) if side.weight else None
    order = np.random.default_rng(secrets.randbits(128)).permutation(len(cells))
    log.info(
        "linked_crosstab %s: %d records kept, %d empty keys and %d duplicates dropped",
        dataset,
        len(cells),
        empty,
        duplicates,
    )
    return Records(
        keys.take(pa.array(order)),
        cells[order],
        weights[order] if weights is not None else None,
        time.perf_counter() - started,
        read,
        empty,
        duplicates,
    )
