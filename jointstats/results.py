"""Released results as pandas DataFrames and tidy files."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from jointstats.errors import ConfigError


@dataclass(frozen=True)
class Result:
    """A released table (one row per cell) and its metadata."""

    table: pd.DataFrame
    metadata: dict[str, Any]

    @classmethod
    def from_json(cls, data: bytes | str) -> Result:
        doc = json.loads(data)
        table = pd.DataFrame(doc["rows"], columns=doc["columns"])
        for column in ("count", "sum", "mean", "weighted_count"):
            if column in table:
                table[column] = pd.to_numeric(table[column])
        if "count" in table:
            table["count"] = table["count"].astype("Int64")
        table["suppressed"] = table["suppressed"].astype(bool)
        return cls(table, doc.get("metadata", {}))

    def to_csv_text(self) -> str:
        frame = self.table.copy()
        frame["suppressed"] = frame["suppressed"].map({True: "true", False: "false"})
        return frame.to_csv(index=False, na_rep="")

    def write(self, path: Path) -> None:
        """Write CSV, JSON (table + metadata) or Parquet, by the file's suffix."""
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix in ("", ".csv"):
            path.write_text(self.to_csv_text())
        elif suffix == ".json":
            rows = json.loads(self.table.to_json(orient="records"))
            path.write_text(json.dumps({"table": rows, "metadata": self.metadata}, indent=2))
        elif suffix == ".parquet":
            self.table.to_parquet(path, index=False)
        else:
            raise ConfigError(f"cannot write {path.name}: use .csv, .json or .parquet")
