"""`jointstats node check`: validate every dataset of a node config, summarise without values.

For each dataset: the source exists and can be read (files parse, the database answers), the
declared columns are present with compatible types, and a summary (rows, columns, types,
nulls) is produced. Nothing here reads or prints a value.
"""

from __future__ import annotations

from collections.abc import Iterator

from jointstats.config import NodeConfig
from jointstats.errors import ConfigError
from jointstats.node.sources import DatasetSummary, source_for


def check_node(config: NodeConfig) -> Iterator[DatasetSummary]:
    """One summary per dataset, in config order; raises at the first dataset with a problem."""
    if not config.datasets:
        raise ConfigError(f"node {config.name} declares no [datasets.NAME] table")
    for name, entry in config.datasets.items():
        yield source_for(name, entry).summary()


def summary_lines(summary: DatasetSummary) -> list[str]:
    """Plain text for the CLI: shape, types and null counts."""
    lines = [f"dataset {summary.dataset}: {summary.description}, {summary.rows} rows"]
    width = max((len(c.name) for c in summary.columns), default=0)
    for column in summary.columns:
        lines.append(
            f"  {column.name:<{width}}  {column.kind:<7}  {column.engine_type:<14}  "
            f"{column.nulls} null"
        )
    return lines
