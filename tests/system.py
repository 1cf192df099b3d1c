"""System tools that some tests need and PyPI cannot provide (a browser, a Java runtime).

Locally a missing tool skips the test, saying what to install; under CI (`CI` set, as
`.ci/run` does after installing them) it fails, so CI never passes by skipping."""

from __future__ import annotations

import os
import shutil

import pytest


def require_tool(commands: tuple[str, ...], package: str, env: str = "") -> str:
    """The first of `commands` on PATH (or the folder in `env`, when set); else skip or fail."""
    for command in commands:
        if found := shutil.which(command):
            return found
    if env and os.environ.get(env):
        return os.environ[env]
    if os.environ.get("CI"):
        pytest.fail(f"{commands[0]} is missing in CI (.ci/run installs Debian's {package})")
    pytest.skip(f"no {commands[0]} on this machine: apt-get install {package} (CI installs it)")


def need_java() -> None:
    """pyspark's JVM (the Spark source's tests)."""
    require_tool(("java",), "openjdk-17-jre-headless", env="JAVA_HOME")
