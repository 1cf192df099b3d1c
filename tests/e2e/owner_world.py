"""A node's folder as its owner has it: keys, roster, a dataset, a policy (for the owner's
commands: check, grants, rehearse, console)."""

from __future__ import annotations

from pathlib import Path

import tomli_w

from jointstats.keys import new_member

REGIONS = ["north", "south", "east", "west"]


def owner_world(root: Path, policy: dict | None = None, datasets: bool = True) -> Path:
    """Write keys for unhcr (node), jips (compute), alice (analyst) and a coordinator, the
    roster, a CSV and node.toml; returns node.toml."""
    from jointstats.keys import Roster

    roster = Roster()
    for name, role in (("coord", "coordinator"), ("unhcr", "node"), ("jips", "compute"),
                       ("alice", "analyst")):  # fmt: skip
        roster.members[name] = new_member(root / "keys" / name, name, role)
    roster.save(root / "roster.toml")
    lines = ["region,displacement_status,income"]
    lines += [f"{REGIONS[i % 4]},{['idp', 'host'][i % 2]},{i * 10}" for i in range(40)]
    (root / "households.csv").write_text("\n".join(lines) + "\n")
    alice = roster.get("alice").signing_fingerprint
    config = {
        "name": "unhcr",
        "roster": "roster.toml",
        "keys": "keys/unhcr",
        "state_dir": "state",
        "policy": policy
        or {
            "analysts": [
                {
                    "fingerprint": alice,
                    "name": "alice",
                    "expires": "2027-06-30",
                    "purpose": "IDP profiling 2026",
                    "datasets": {"households": ["region", "displacement_status"]},
                }
            ],
            "partners": ["jips"],
            "budgets": {"households": 1.0},
        },
    }
    if datasets:
        config["datasets"] = {"households": {"path": "households.csv"}}
    (root / "state").mkdir(exist_ok=True)
    (root / "node.toml").write_text(tomli_w.dumps(config))
    return root / "node.toml"
