"""Rich rendering for the CLI: live job progress and released tables."""

from __future__ import annotations

import pandas as pd
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from jointstats.client import Client, JobStatus
from jointstats.results import Result


def _describe(status: JobStatus) -> str:
    """One line: the job's state and each node's state or current phase."""
    parts = ", ".join(
        f"{node}: {reason if state in ('running', 'waiting') and reason else state}"
        for node, (state, reason) in status.nodes.items()
    )
    return escape(f"job {status.job_id} {status.state} ({parts})")


def follow_job(client: Client, job_id: str, console: Console, timeout: float = 600.0) -> Result:
    with console.status(f"job {job_id} submitted") as spinner:
        return client.wait(job_id, timeout, on_status=lambda s: spinner.update(_describe(s)))


def raised_min_cell(result: Result) -> tuple[int, int] | None:
    """(asked, used) when a party's policy floor raised the job's min_cell, else None."""
    asked = (result.job.get("disclosure") or {}).get("min_cell")
    used = (result.metadata.get("disclosure") or {}).get("min_cell")
    if isinstance(asked, int) and isinstance(used, int) and used > asked:
        return asked, used
    return None


def print_result(console: Console, result: Result) -> None:
    table = Table(*result.table.columns, title=f"job {result.metadata.get('job_id', '')}")
    for row in result.table.itertuples(index=False):
        cells = []
        for value, column in zip(row, result.table.columns, strict=True):
            if column == "suppressed":
                cells.append("[yellow]suppressed[/yellow]" if value else "")
            elif pd.isna(value):
                cells.append("")
            elif column == "share":
                cells.append(f"{value:.1%}")
            else:
                cells.append(f"{value:.2f}" if isinstance(value, float) else str(value))
        table.add_row(*cells)
    console.print(table)
    meta = result.metadata
    disclosure = meta.get("disclosure", {})
    raised = raised_min_cell(result)
    if raised is not None:
        console.print(
            f"[yellow]warning:[/yellow] min_cell raised from {raised[0]} to {raised[1]} by a "
            "node's policy floor",
            highlight=False,
        )
    matched = f"matched {meta['matched']}; " if "matched" in meta else ""
    console.print(
        f"{matched}inputs: {', '.join(meta.get('inputs', []))}; "
        f"parties: {', '.join(meta.get('parties', []))}; "
        f"min_cell {disclosure.get('min_cell')}; suppressed {meta.get('suppressed_cells')} of "
        f"{meta.get('cells')} cells",
        highlight=False,
        soft_wrap=True,  # one line when piped, for grep and scripts
    )
