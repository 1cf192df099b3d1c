"""Shared fixtures: synthetic data with small cells and a running federation on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from jointstats.local import LocalFederation, LocalNode
from tests.pg import postgres  # noqa: F401 (session fixture: a real PostgreSQL server)

REPO = Path(__file__).resolve().parents[1]
AGENCIES = ("unhcr", "drc", "nrc")
REGIONS = ["north", "south", "east", "west"]
STATUSES = ["idp", "returnee", "host"]
JOB: dict = {
    "kind": "crosstab",
    "dataset": "households",
    "by": ["region", "displacement_status"],
    "domains": {"region": REGIONS, "displacement_status": STATUSES},
    "disclosure": {"min_cell": 10},
}


def make_households(rng: np.random.Generator, rows: int) -> pd.DataFrame:
    """Skewed categories so that some cells are small, some empty."""
    return pd.DataFrame(
        {
            "region": rng.choice(REGIONS, rows, p=[0.55, 0.3, 0.14, 0.01]),
            "displacement_status": rng.choice(STATUSES, rows, p=[0.6, 0.33, 0.07]),
            "income": rng.integers(-500, 3000, rows),
        }
    )


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(20261127)
    for agency, rows in zip(AGENCIES, (300, 180, 90), strict=True):
        (root / agency).mkdir()
        make_households(rng, rows).to_csv(root / agency / "households.csv", index=False)
    make_households(rng, 150).to_parquet(root / "drc" / "households_parquet.parquet")
    return root


def pooled(data_dir: Path, agencies: tuple[str, ...] = AGENCIES) -> pd.DataFrame:
    return pd.concat([pd.read_csv(data_dir / a / "households.csv") for a in agencies])


@pytest.fixture(scope="session")
def federation(
    data_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalFederation]:
    """Three agencies and a compute-only node, running for the whole test session."""
    nodes = [LocalNode(a, {"households": data_dir / a / "households.csv"}) for a in AGENCIES]
    nodes.append(LocalNode("jips"))
    with LocalFederation(nodes, tmp_path_factory.mktemp("fed"), session_timeout=60) as fed:
        yield fed
