"""The committed generated code matches protos/ (regenerate with `make proto`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def test_generated_code_is_current(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-I",
            str(REPO / "protos"),
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            str(REPO / "protos/jointstats/v1/wire.proto"),
        ],
        check=True,
    )
    for name in ("wire_pb2.py", "wire_pb2.pyi", "wire_pb2_grpc.py"):
        fresh = (tmp_path / "jointstats/v1" / name).read_text()
        committed = (REPO / "jointstats/v1" / name).read_text()
        assert fresh == committed, f"jointstats/v1/{name} is stale: run `make proto`"
