"""Fuzzy linkage at a data holder: normalise linkage fields, then encode them under the job's key.

Normalisation (no key needed, done in the local step):
- `name`: NFKC, transliterated to Latin by anyascii (Олександр -> Oleksandr), casefolded,
  everything but letters and digits removed, then folded so that common transliteration
  variants coincide (x -> ks, w -> v, kh -> h, g -> h, y/j -> i, ...).
- `text`: the same, but words are kept apart by single spaces.
- `date`: parsed with the field's strptime format, kept as "YYYYMMDD".
- `exact`: NFKC, casefolded, stripped.
An empty or unparseable value becomes None: missing evidence, never an error.

Encoding (needs the per-job key A and B agreed, which H never sees; see `encode`):
- `name`/`text`: a field-level Bloom filter of padded bigrams, 512 bits; a bigram sets
  `HASHES[kind]` bits chosen by keyed BLAKE2b (RFC 7693) of the bigram under a field subkey,
  then each bit is flipped with probability FLIP (BLIP, Schnell & Borgs 2016) from fresh
  randomness, so equal names give different filters and exact-frequency counting fails.
- `date`: ten 8-byte keyed tags: the date, the date with day and month in sorted order
  (a swap agrees), and the date with each of its 8 digits blanked (a one-digit slip agrees).
- `exact`: one 8-byte keyed tag.
- blocking: one 8-byte keyed tag per blocking pass (see `passes`).
A tag or filter of zero means "missing". Tags are never zero otherwise (lowest bit set).
"""

from __future__ import annotations

import hashlib
import re
import secrets
import unicodedata
from collections.abc import Callable, Iterable
from datetime import datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from anyascii import anyascii

from jointstats.protocols.linked.job import LinkField

BLOOM_BITS = 512
BLOOM_WORDS = BLOOM_BITS // 64
HASHES = {"name": 12, "text": 6}  # bits per bigram; ~9 bigrams per name, ~25 per address
FLIP = 0.02  # BLIP: probability that each filter bit is flipped (0 disables hardening)
DATE_TAGS = 10
WIDTHS = {"name": BLOOM_WORDS, "text": BLOOM_WORDS, "date": DATE_TAGS, "exact": 1}
_FOLDS = (("shch", "sc"), ("kh", "h"), ("ph", "f"), ("ck", "k"), ("x", "ks"), ("w", "v"))
_FOLDS += (("q", "k"), ("g", "h"), ("y", "i"), ("j", "i"), ("ii", "i"))
_NOT_WORD = re.compile(r"[^a-z0-9]+")
# street-type words that one side writes and the other leaves out (after `fold`)
ADDRESS_WORDS = frozenset(
    ("vul", "vuli", "vulitsia", "vulica", "ul", "ulitsa", "st", "str", "street", "pr", "prov")
    + ("prosp", "prospekt", "ave", "avenue", "rd", "road", "bulvar", "blvd")
)
_VOWELS = re.compile(r"[aeiou]")


def width(kind: str) -> int:
    """uint64 words per record that an encoded field of `kind` takes on the wire."""
    return WIDTHS[kind]


# -- normalisation -------------------------------------------------------------------------


def latin(text: str) -> str:
    """Any script to lower-case ASCII letters, digits and spaces."""
    ascii_text = anyascii(unicodedata.normalize("NFKC", text)).casefold()
    return _NOT_WORD.sub(" ", ascii_text).strip()


def fold(text: str) -> str:
    """Make common transliteration variants of a Latin name coincide."""
    for old, new in _FOLDS:
        text = text.replace(old, new)
    return text


def normalize_name(text: str) -> str | None:
    return fold(latin(text).replace(" ", "")) or None


def normalize_text(text: str) -> str | None:
    words = [w for w in fold(latin(text)).split() if w not in ADDRESS_WORDS]
    return " ".join(words) or None


def normalize_exact(text: str) -> str | None:
    return unicodedata.normalize("NFKC", text).casefold().strip() or None


def date_parser(pattern: str) -> Callable[[str], str | None]:
    def parse(text: str) -> str | None:
        try:
            return datetime.strptime(text.strip(), pattern).strftime("%Y%m%d")
        except ValueError:
            return None

    return parse


def normalizer(field: LinkField, side: str) -> Callable[[str], str | None]:
    if field.kind == "date":
        return date_parser(field.left_format if side == "left" else field.right_format)
    return {"name": normalize_name, "text": normalize_text, "exact": normalize_exact}[field.kind]


def normalize_column(values: pa.Array, convert: Callable[[str], str | None]) -> pa.Array:
    """Normalise each distinct value once; nulls and failures become nulls (missing)."""
    encoded = pc.dictionary_encode(values)
    if isinstance(encoded, pa.ChunkedArray):
        encoded = encoded.combine_chunks()
    distinct = [None if v is None else convert(v) for v in encoded.dictionary.to_pylist()]
    return pa.array(distinct, type=pa.string()).take(encoded.indices)


# -- blocking ------------------------------------------------------------------------------


def skeleton(text: str) -> str:
    """Consonants of a folded name (Oleksandr, Aleksandr, Olexandr -> lksndr)."""
    return _VOWELS.sub("", text.replace(" ", ""))


def block_token(kind: str, value: str, part: str = "") -> str:
    if kind == "date":
        if part == "daymonth":  # sorted, so that a swap of day and month still agrees
            return "".join(sorted((value[4:6], value[6:8])))
        return value[:4] if part == "year" else value
    if kind in ("name", "text"):
        consonants = skeleton(value)
        return (consonants if len(consonants) >= 2 else value)[: 3 if kind == "name" else 4]
    return value


def blocked_fields(fields: Iterable[LinkField]) -> list[set[int]]:
    """Per blocking pass, the fields whose (partial) agreement it requires."""
    return [{f for f, _ in parts} for parts in passes(fields)]


def passes(fields: Iterable[LinkField]) -> list[tuple[tuple[int, str], ...]]:
    """Blocking passes: (field index, part) tuples whose tokens must all agree. Every date
    alone; every pair of name/text fields; every name with the year of every date, and with
    its day and month (in sorted order, so a swap still agrees)."""
    fields = list(fields)
    dates = [k for k, f in enumerate(fields) if f.kind == "date"]
    words = [k for k, f in enumerate(fields) if f.kind in ("name", "text")]
    names = [k for k, f in enumerate(fields) if f.kind == "name"]
    out: list[tuple[tuple[int, str], ...]] = [((d, ""),) for d in dates]
    out += [((a, ""), (b, "")) for x, a in enumerate(words) for b in words[x + 1 :]]
    out += [((n, ""), (d, "year")) for n in names for d in dates]
    out += [((n, ""), (d, "daymonth")) for n in names for d in dates]
    if len(out) == 0:  # a single name or text field: block on its token alone
        out = [((w, ""),) for w in words]
    return out


# -- encoding ------------------------------------------------------------------------------


def subkey(key: bytes, purpose: str) -> bytes:
    """A 32-byte key for one purpose ("field 2", "block 0"), derived by keyed BLAKE2b."""
    return hashlib.blake2b(purpose.encode(), key=key, digest_size=32).digest()


def keyed_tags(values: list[str | None], key: bytes) -> np.ndarray:
    """8-byte keyed BLAKE2b of each value as uint64 (lowest bit set); 0 for a missing value."""
    out = np.zeros(len(values), dtype=np.uint64)
    cache: dict[str, int] = {}
    for k, value in enumerate(values):
        if value is None:
            continue
        tag = cache.get(value)
        if tag is None:
            digest = hashlib.blake2b(value.encode(), key=key, digest_size=8).digest()
            tag = cache[value] = int.from_bytes(digest, "little") | 1
        out[k] = tag
    return out


def bigrams(text: str) -> set[str]:
    padded = f"_{text}_"
    return {padded[k : k + 2] for k in range(len(padded) - 1)}


def bloom(
    values: list[str | None], kind: str, key: bytes, flip: float, rng: np.random.Generator
) -> np.ndarray:
    """(n, BLOOM_WORDS) uint64 Bloom filters; rows of missing values are all zero."""
    hashes = HASHES[kind]
    positions: dict[str, np.ndarray] = {}
    distinct: dict[str, np.ndarray] = {}
    bits = np.zeros((len(values), BLOOM_BITS), dtype=bool)
    present = np.zeros(len(values), dtype=bool)
    for k, value in enumerate(values):
        if value is None:
            continue
        row = distinct.get(value)
        if row is None:
            row = np.zeros(BLOOM_BITS, dtype=bool)
            for gram in bigrams(value):
                where = positions.get(gram)
                if where is None:
                    digest = hashlib.blake2b(gram.encode(), key=key, digest_size=2 * hashes)
                    where = np.frombuffer(digest.digest(), dtype="<u2") % BLOOM_BITS
                    positions[gram] = where
                row[where] = True
            distinct[value] = row
        bits[k] = row
        present[k] = True
    if flip:
        bits ^= (rng.random(bits.shape) < flip) & present[:, None]
    return np.packbits(bits, axis=1, bitorder="little").view("<u8").astype(np.uint64)


def date_tags(values: list[str | None], key: bytes) -> np.ndarray:
    """(n, DATE_TAGS): the date, day and month sorted, and each digit blanked in turn."""
    variants: list[list[str | None]] = [[] for _ in range(DATE_TAGS)]
    for value in values:
        if value is None:
            for column in variants:
                column.append(None)
            continue
        day_month = "".join(sorted((value[4:6], value[6:8])))
        variants[0].append(value)
        variants[1].append(value[:4] + day_month)
        for d in range(8):
            variants[2 + d].append(f"{d}:{value[:d]}?{value[d + 1 :]}")
    return np.stack([keyed_tags(v, subkey(key, f"date {c}")) for c, v in enumerate(variants)], 1)


def encode_field(
    values: pa.Array,
    kind: str,
    key: bytes,
    flip: float = FLIP,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """One normalised field of every record as (n, width(kind)) uint64 words."""
    listed = values.to_pylist()
    if kind in ("name", "text"):
        rng = rng or np.random.default_rng(secrets.randbits(128))
        return bloom(listed, kind, key, flip, rng)
    if kind == "date":
        return date_tags(listed, key)
    return keyed_tags(listed, key)[:, None]


def blocking_keys(columns: list[pa.Array], fields: list[LinkField], key: bytes) -> np.ndarray:
    """(n, len(passes)) keyed tags; 0 where a field of the pass is missing."""
    listed = [c.to_pylist() for c in columns]
    out = []
    for p, parts in enumerate(passes(fields)):
        values: list[str | None] = []
        for k in range(len(listed[0]) if listed else 0):
            tokens = []
            for f, part in parts:
                value = listed[f][k]
                if value is None:
                    break
                tokens.append(block_token(fields[f].kind, value, part))
            values.append("\x1f".join(tokens) if len(tokens) == len(parts) else None)
        out.append(keyed_tags(values, subkey(key, f"block {p}")))
    return np.stack(out, 1) if out else np.zeros((0, 0), dtype=np.uint64)


def encode(
    columns: list[pa.Array], fields: list[LinkField], key: bytes, flip: float = FLIP
) -> list[np.ndarray]:
    """Everything a holder sends H: one array per field, then the blocking keys."""
    rng = np.random.default_rng(secrets.randbits(128))
    arrays = [
        encode_field(column, field.kind, subkey(key, f"field {f}"), flip, rng)
        for f, (column, field) in enumerate(zip(columns, fields, strict=True))
    ]
    return [*arrays, blocking_keys(columns, fields, key)]
