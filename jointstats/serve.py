"""The server commands without the rest of the command line.

`jointstats node serve` and `jointstats coordinator serve` run `run` below. The processes that
`jointstats local` starts run it through `python -m jointstats.serve node serve --config FILE`
(same arguments, same logging, same exit codes), which skips the CLI's imports and argument
parser (typer, rich and every other command): about 0.1 s of CPU per process, paid by the
coordinator and every node at once while a one-shot run starts (docs/performance.md).
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

from jointstats.errors import JointstatsError

ROLES = ("node", "coordinator")
SERVE_OPTIONS = (("serve", "--config"), ("serve", "-c"))
USAGE = "usage: python -m jointstats.serve {node|coordinator} serve --config FILE"


def run(role: str, config: Path) -> None:
    """Serve as `role` with the config file `config` until stopped (SIGTERM or Ctrl-C)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if role == "node":
        from jointstats.config import NodeConfig
        from jointstats.node.server import serve as serve_node

        asyncio.run(serve_node(NodeConfig.load(config)))
    else:
        from jointstats.config import CoordinatorConfig
        from jointstats.coordinator.server import serve as serve_coordinator

        asyncio.run(serve_coordinator(CoordinatorConfig.load(config)))


def main(argv: list[str]) -> int:
    """The exit code; errors are one line on stderr, as the CLI prints them."""
    role, command, option, config = [*argv, "", "", "", ""][:4]
    if len(argv) != 4 or role not in ROLES or (command, option) not in SERVE_OPTIONS:
        print(USAGE, file=sys.stderr)
        return 2
    try:
        run(role, Path(config))
    except JointstatsError as exc:
        print("error: " + str(exc), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
