"""A pickle whose loading creates the file named by JOINTSTATS_TEST_MARKER."""

from __future__ import annotations

import os
import pathlib
import pickle


class Bomb:
    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(os.environ["JOINTSTATS_TEST_MARKER"]),))


def bomb_payload() -> bytes:
    return pickle.dumps(Bomb())
