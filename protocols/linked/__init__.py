"""Implementation of the linked crosstab (`kind = "linked_crosstab"`).

The protocol's description, threat model and leakage: jointstats.protocols.linked_crosstab.
Modules: job (schema, plan), records (local step), wire (key agreement, tags, PRG, chunked
arrays), program (the three parties' MPC program).
"""
