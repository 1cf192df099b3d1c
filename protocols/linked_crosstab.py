"""Linked cross-tabulation between a registry and a survey about the same people (DESIGN §5.2).

Inputs: a left node A (e.g. a ministry's registry) and a right node B (e.g. a survey), each with
a dataset, a key column (national id) and `by` columns with declared domains; optionally a
survey `weight` on the right; a helper H, a third node (compute-only is fine) that acts as the
linkage unit. Output: one row per cell of the product of the left then the right domains, in
domain order: the left `by` values, the right `by` values, `count` (and `weighted_count`),
`suppressed`; metadata `matched` (records linked, itself suppressed below the threshold).

Steps (parties A = left, B = right, H = helper; MPyC party ids follow the plan's order):
1. normalize: A and B read their records, normalize keys (NFKC, casefold, strip, as the job
   asks), drop empty keys, resolve duplicates (error, or keep the first in file order), encode
   each record's `by` combination as a cell index (values outside a domain are an error, as a
   count per column, or map to "other"), and shuffle with a fresh secret permutation.
2. tag: A and B agree a fresh key over their sealed channel (ephemeral X25519 + HKDF-SHA256;
   the channel is end-to-end authenticated with roster keys, so H and the coordinator never
   see it) and send H the 16-byte keyed BLAKE2b tags of their keys, in shuffled order.
3. match: H joins the tags into pairs (i_k, j_k) in a fresh random order, sends the i list to
   B and the j list to A.
4. share: A sends B its one-hot matrix U minus a mask R, and H a seed that expands to R; B
   does the same with V (one-hot, plus a weighted copy when the job has a weight). The holders
   of the two shares of U (B and H, who know i) select the matched rows and re-share them
   into 3-party replicated secret sharing over Z_2^64 (each share held by two parties, the
   share that A holds is pseudorandom from seeds A shares); likewise V with A, H and j.
5. product and disclose: each party multiplies its shares locally (three of the nine terms of
   U_M^T V_M) and adds a pseudorandom zero sharing, so the three d_A x d_B partial tables are
   a uniform additive sharing of T mod 2^64. For the counts, A and H send their partials to
   B, H's plus a random r < 2^63, so B holds T + r exactly; B inputs T + r and H inputs r into
   one MPyC session (SecInt(64)), which subtracts, computes b = [count >= k] (or count == 0
   with `release_zeros`), opens b, then only the released counts. Weighted counts (weights
   as integers in millionths; suppression uses the unweighted count) are opened for released
   cells only, each party broadcasting its uniformly random partial.

Threat model: semi-honest, honest majority of the three parties (no two of A, B, H collude);
the coordinator relays only ciphertext (learns sizes and timing).

Leakage (what a party learns besides the released table and its own data):
- A learns |B| (rows of B's masked matrix) and n (length of its index list); B learns |A|
  and n; H learns |A|, |B|, n and the match pattern between the two shuffled tag lists.
- The index lists reveal nothing else: A receives j_k, positions in B's secret shuffled order,
  which A has never seen, so the list is a uniformly random set of n positions among |B|;
  B's i list likewise. Neither learns which of its own records matched: the positions of its
  own records in the match (A's i, B's j) go only to the other data holder and to H.
- Every share a party receives is masked by a pseudorandom value from a seed it does not
  hold (R and S for the masked one-hot matrices, the pair seeds for the re-sharing), so it is
  uniformly distributed; the MPyC session opens only the suppression flags and released cells.
- H sees only tags under a key fresh for the job, so it cannot invert them by trying ids
  (it lacks the key) nor link people across jobs; it never sees attributes.
- B sees T + r per cell with r < 2^63: statistically hiding, distance at most n / 2^63.
- n is revealed to all three parties; `matched` in the result is suppressed below min_cell.
  Hiding n (padding with dummies) is a later goal.

Fuzzy linkage (`[linkage] method = "fuzzy"`, DESIGN §5.4, docs/adr/0007-fuzzy-linkage.md):
steps 2-3 change. A and B send H, instead of tags of one key, keyed encodings of each linkage
field (Bloom filters of bigrams with random bit flips, date and exact tags) and keyed blocking
tags (protocols.linked.fuzzy); H links them (protocols.linked.match) and sends A and B its
quality figures. H then learns, on top of the above, how similar records are field by field
(for any pair it compares), which records share a blocking token pair exactly (a name's
consonant skeleton with another name, a birth year, ...) and which values are missing, never
a value; frequency attacks on the filters and on the blocking tags are measured in
tests/unit/test_fuzzy_attack.py. A and B learn the quality figures.

References: DESIGN §5.2; docs/protocols/linked_crosstab.md; docs/adr/0004-linkage-protocol.md;
replicated secret sharing: Araki, Furukawa, Lindell, Nof, Ohara, "High-throughput semi-honest
secure three-party computation with an honest majority", CCS 2016.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from jointstats.protocols.base import Egress, FederationView, Outflow, Plan, SessionContext
from jointstats.protocols.crosstab import check_purpose, share_bytes
from jointstats.protocols.linked import job as schema
from jointstats.protocols.linked.job import LinkedJob
from jointstats.protocols.release import Disclosure

if TYPE_CHECKING:  # pandas comes with records: a node process that only decides never loads it
    from jointstats.protocols.linked.records import Records


class LinkedCrosstab:
    kind = schema.KIND
    version = schema.VERSION

    def parse(self, doc: dict[str, Any]) -> LinkedJob:
        check_purpose(doc)  # `purpose` is common to all job kinds: checked here
        return schema.parse({k: v for k, v in doc.items() if k != "purpose"})

    def plan(self, job: LinkedJob, view: FederationView) -> Plan:
        return schema.plan(job, view)

    def columns_used(self, job: LinkedJob, node: str) -> dict[str, list[str]]:
        return schema.columns_used(job, node)

    def disclosure(self, job: LinkedJob) -> Disclosure:
        return job.disclosure

    def signed_parties(self, job: LinkedJob) -> tuple[tuple[str, ...] | None, set[str]]:
        """The input nodes and the non-input parties the analyst's signed job names."""
        return (job.left.node, job.right.node), {job.helper}

    def local_step(self, job: LinkedJob, node: str, sources: dict[str, Any]) -> Records:
        side = job.left if node == job.left.node else job.right
        from jointstats.protocols.linked.records import prepare

        return prepare(job, side, node, sources)

    def local_facts(self, job: LinkedJob, local: Records) -> dict[str, Any]:
        """What this node's audit log records about its own side (counts, never values)."""
        return {
            "rows_read": local.read,
            "rows_used": len(local),
            "empty_keys_dropped": local.empty_keys,
            "duplicates_dropped": local.duplicates,
        }

    def egress(self, job: LinkedJob, node: str, plan: Plan, rows: int | None) -> Egress:
        return egress(job, node, rows)

    async def mpc_program(
        self, job: LinkedJob, ctx: SessionContext, local: Records | None
    ) -> dict[str, Any]:
        from jointstats.protocols.linked import program

        return await program.run(job, ctx, local)


def _array(rows: int | None, width: int, itemsize: int = 8) -> dict[str, Any]:
    """Outflow fields of one wire.send_array: a header message, then blocks of rows."""
    # The linked modules import numpy and pyarrow: loaded for a linked job's statement only,
    # so that nodes and the coordinator start without them.
    from jointstats.protocols.linked import wire

    if rows is None:
        return {"values": None, "value_bytes": itemsize}
    per_message = max(1, wire.MESSAGE_BYTES // max(1, width * itemsize))
    return {
        "values": rows * width,
        "value_bytes": itemsize,
        "header_bytes": wire._HEADER.size,
        "messages": 1 + -(-rows // per_message),
    }


LEAKAGE = {
    "A": "the right node learns your record count and n, the number of matched records; the "
    "helper learns your record count, n and the match pattern over shuffled positions (never "
    "keys: they are keyed with a per-job key it lacks, nor attributes); nobody learns which "
    "of your records matched",
    "B": "the left node learns your record count and n, the number of matched records; the "
    "helper learns your record count, n and the match pattern over shuffled positions (never "
    "keys: they are keyed with a per-job key it lacks, nor attributes); nobody learns which "
    "of your records matched",
    "H": "you hold no data: the data nodes learn nothing from you beyond n and the released table",
}


def _fuzzy_outflows(job: LinkedJob, h: str, rows: int | None, left: bool) -> list[Outflow]:
    """Fuzzy linkage: one keyed encoding per linkage field, then the blocking tags, to H."""
    from jointstats.protocols.linked import fuzzy

    flows = []
    for field in job.linkage.fields:
        column = field.left if left else field.right
        what = {
            "name": "Bloom filter (512 bits, keyed bigrams and letters, 2 % of bits flipped)",
            "text": "Bloom filter (512 bits, keyed bigrams, 2 % of bits flipped)",
            "date": "ten keyed 8-byte tags (date, day-month swapped, each digit blanked)",
            "exact": "keyed 8-byte tag",
        }[field.kind]
        flows.append(Outflow((h,), "DATA", "tag", f"`{column}`: {what} per record",
                             at_most=True, **_array(rows, fuzzy.width(field.kind))))  # fmt: skip
    passes = len(fuzzy.passes(job.linkage.fields))
    flows.append(Outflow((h,), "DATA", "tag", f"{passes} keyed 8-byte blocking tags per record",
                         at_most=True, **_array(rows, passes)))  # fmt: skip
    return flows


def egress(job: LinkedJob, node: str, rows: int | None) -> Egress:
    """Linked crosstab's egress for `node` (DESIGN §5.2, module docstring, steps 2-5). `rows`
    is this node's row count: an upper bound of the records it links (empty and duplicate
    keys are dropped first); n, the matched count, is at most that and known only later."""
    from jointstats.protocols.linked import match, wire

    a, b, h = job.left.node, job.right.node, job.helper
    w_u, w_v = job.widths()
    cells = job.width(job.left) * job.width(job.right)
    role = {a: "A", b: "B", h: "H"}.get(node)
    flows: list[Outflow] = []
    if role in ("A", "B"):
        left = role == "A"
        peer, w_me, w_peer = (b, w_u, w_v) if left else (a, w_v, w_u)
        key = (job.left if left else job.right).key
        flows += [
            Outflow((peer,), "DATA", "tag", "ephemeral X25519 public key (32 bytes; agrees the "
                    "per-job key with the other data node)", 1, 32, 1),
            *(_fuzzy_outflows(job, h, rows, left) if job.linkage.fuzzy else [
                Outflow((h,), "DATA", "tag", f"keyed 16-byte fingerprints of `{key}`",
                        at_most=True, **_array(rows, 1, wire.TAG_BYTES))]),
            Outflow((h,), "DATA", "share", "32-byte seed of the mask below", 1, 32, 1),
            Outflow((peer,), "DATA", "share",
                    f"values of a masked {rows if rows is not None else 'N'} x {w_me} matrix "
                    "(one-hot cells of your records minus a pseudorandom mask)",
                    at_most=True, **_array(rows, w_me)),
            Outflow((h,), "DATA", "share", f"masked shares of the other node's matched rows "
                    f"(n x {w_peer}, n at most your record count)",
                    at_most=True, **_array(rows, w_peer)),
        ]  # fmt: skip
    if role == "H":
        flows += [
            Outflow((b,), "DATA", "match", "4-byte positions of the matched left records "
                    "(n, the matched count)", **_array(None, 1, 4)),
            Outflow((a,), "DATA", "match", "4-byte positions of the matched right records "
                    "(n)", **_array(None, 1, 4)),
            *(
                Outflow((p,), "DATA", "match", "linkage quality figures (false-match rate, "
                        "recall estimate, histogram of the linked pairs' probabilities)",
                        **_array(2 + match.HISTOGRAM_BINS, 1))
                for p in ((a, b) if job.linkage.fuzzy else ())
            ),
            Outflow((b,), "DATA", "share", f"masked shares of the left matrix (n x {w_u})",
                    **_array(None, w_u)),
            Outflow((a,), "DATA", "share", f"masked shares of the right matrix (n x {w_v})",
                    **_array(None, w_v)),
        ]  # fmt: skip
    if role in ("A", "H"):
        masked = "plus a random r < 2^63" if role == "H" else "uniformly masked"
        flows.append(
            Outflow((b,), "DATA", "disclose", f"partial cell counts ({masked})", **_array(cells, 1))
        )
    if role in ("B", "H"):
        what = "Shamir shares of the masked cell counts" if role == "B" else "Shamir shares of r"
        others = tuple(p for p in (a, b, h) if p != node)
        flows.append(Outflow(others, "MPC", "disclose", what, cells, share_bytes(64), 1))
    if role is not None:
        others = tuple(p for p in (a, b, h) if p != node)
        if job.weighted:
            flows.append(
                Outflow(others, "DATA", "disclose", "random shares of the released cells' "
                        "weighted counts", at_most=True, **_array(cells, 1))
            )  # fmt: skip
        flows.append(
            Outflow(others, "MPC", "disclose", "release-step MPC messages (threshold, "
                    "suppression flags, openings; each a random-looking share)")
        )  # fmt: skip
    margins = " plus margins" if job.disclosure.margins else ""
    table = (
        f"{job.width(job.left)} x {job.width(job.right)} = {cells} cells{margins} "
        f"(count{', weighted_count' if job.weighted else ''}), and n (matched)"
    )
    return Egress(tuple(flows), table, LEAKAGE.get(role or "H", LEAKAGE["H"]))


PROTOCOL = LinkedCrosstab()
