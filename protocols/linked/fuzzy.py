"""Fuzzy linkage at a data holder: normalise linkage fields, then encode them under the job's key.

Normalisation (no key needed, done in the local step):
- `name`: NFKC, transliterated to Latin by anyascii (Олександр -> Oleksandr), casefolded,
  apostrophes dropped, everything else but letters and digits removed, then folded so that
  common transliteration variants coincide (sch -> sc, kh -> h, ts -> c, x -> ks, w -> v,
  g -> h, y/j -> i, ...), and Russian forms of Ukrainian given names mapped to the Ukrainian
  form (Aleksandr -> Oleksandr, Nikolay -> Mykola).
- `text`: the same, but words are kept apart by single spaces.
- `date`: parsed with the field's strptime format, kept as "YYYYMMDD".
- `exact`: NFKC, casefolded, stripped.
An empty or unparseable value becomes None: missing evidence, never an error.

Encoding (needs the per-job key A and B agreed, which H never sees; see `encode`):
- `name`/`text`: a field-level Bloom filter of padded bigrams (and, for names, letters),
  512 bits; each sets `HASHES[kind]` bits chosen by keyed BLAKE2b (RFC 7693) under a field
  subkey, then each bit is flipped with probability FLIP (BLIP, Schnell & Borgs 2016) from
  fresh randomness, so equal names give different filters and exact counting fails.
- `date`: ten 8-byte keyed tags: the date, the date with day and month in sorted order
  (a swap agrees), and the date with each of its 8 digits blanked (a one-digit slip agrees).
- `exact`: one 8-byte keyed tag.
- blocking: one 8-byte keyed tag per blocking pass (see `passes`).
A tag or filter of zero means "missing". Tags are never zero otherwise (lowest bit set).
Every keyed hash is computed once per distinct value or bigram; rows are then gathered with
numpy, so encoding costs about a second per 10^5 records.
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
# order matters: shch/sch before h is touched, ts -> c before ck -> k (Kozatska, Kozacka)
_FOLDS = (("shch", "sc"), ("sch", "sc"), ("kh", "h"), ("ph", "f"), ("ts", "c"), ("ck", "k"))
_FOLDS += (("x", "ks"), ("w", "v"), ("q", "k"), ("g", "h"), ("y", "i"), ("j", "i"), ("ii", "i"))
_APOSTROPHES = str.maketrans("", "", "'`\u2019\u02bc")  # soft sign and apostrophe: dropped
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
    # anyascii writes the soft sign as an apostrophe that transliterations leave out:
    # dropped, not a word break (Козацька -> kozatska, as Kozatska)
    return _NOT_WORD.sub(" ", ascii_text.translate(_APOSTROPHES)).strip()


def fold(text: str) -> str:
    """Make common transliteration variants of a Latin name coincide."""
    for old, new in _FOLDS:
        text = text.replace(old, new)
    return text


# Russian forms of Ukrainian given names (as Russian-language documents and transliterations
# write them) whose folded spellings stay apart: mapped to the Ukrainian form's folding, as
# name-variant tables do in FEBRL and splink. Whole values only, after folding.
_VARIANTS = {
    "Aleksandr": "Олександр", "Aleksei": "Олексій", "Aleksey": "Олексій", "Andrei": "Андрій",
    "Andrey": "Андрій", "Sergei": "Сергій", "Sergey": "Сергій", "Dmitrii": "Дмитро",
    "Dmitriy": "Дмитро", "Dmitry": "Дмитро", "Nikolai": "Микола", "Nikolay": "Микола",
    "Mikhail": "Михайло", "Iurii": "Юрій", "Yuriy": "Юрій", "Yuri": "Юрій", "Evgenii": "Євген",
    "Evgeniy": "Євген", "Yevgeny": "Євген", "Grigorii": "Григорій", "Grigoriy": "Григорій",
    "Vladimir": "Володимир", "Vasilii": "Василь", "Vasiliy": "Василь", "Pavel": "Павло",
    "Petr": "Петро", "Pyotr": "Петро", "Vitalii": "Віталій", "Vitaliy": "Віталій",
    "Igor": "Ігор", "Konstantin": "Костянтин", "Maksim": "Максим", "Ivan": "Іван",
    "Elena": "Олена", "Yelena": "Олена", "Olga": "Ольга", "Natalia": "Наталія",
    "Natalya": "Наталія", "Tatiana": "Тетяна", "Tatyana": "Тетяна", "Irina": "Ірина",
    "Svetlana": "Світлана", "Ekaterina": "Катерина", "Yekaterina": "Катерина",
    "Iuliia": "Юлія", "Yulia": "Юлія", "Liudmila": "Людмила", "Lyudmila": "Людмила",
    "Anna": "Ганна", "Galina": "Галина", "Nadezhda": "Надія", "Sofia": "Софія",
    "Viktoria": "Вікторія", "Kristina": "Христина", "Evgeniia": "Євгенія", "Evgeniya": "Євгенія",
    "Larisa": "Лариса", "Daria": "Дарина", "Darya": "Дарина",
}  # fmt: skip


def _base_name(text: str) -> str:
    return fold(latin(text).replace(" ", ""))


_VARIANT_OF = {_base_name(a): _base_name(b) for a, b in _VARIANTS.items()}
_VARIANT_OF = {a: b for a, b in _VARIANT_OF.items() if a != b}


def normalize_name(text: str) -> str | None:
    folded = _base_name(text)
    return _VARIANT_OF.get(folded, folded) or None


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


_DIGITS = re.compile(r"[0-9]+")
NAME_TOKEN = 99  # consonants of a name that a blocking token keeps


def block_token(kind: str, value: str, part: str = "") -> str:
    if kind == "date":
        day_month = "".join(sorted((value[4:6], value[6:8])))  # a swap still agrees
        return {"year": value[:4], "daymonth": day_month, "sorted": value[:4] + day_month}.get(
            part, value
        )
    if kind == "name":
        consonants = skeleton(value)
        return (consonants if len(consonants) >= 2 else value)[:NAME_TOKEN]
    if kind == "text":  # a place: the first consonants of its words, and its numbers
        letters = _DIGITS.sub("", skeleton(value))
        return (letters if len(letters) >= 2 else value)[:4] + "".join(_DIGITS.findall(value))
    return value


def blocked_fields(fields: Iterable[LinkField]) -> list[set[int]]:
    """Per blocking pass, the fields whose (partial) agreement it requires."""
    return [{f for f, _ in parts} for parts in passes(fields)]


def passes(fields: Iterable[LinkField]) -> list[tuple[tuple[int, str], ...]]:
    """Blocking passes: (field index, part) tuples whose tokens must all agree. Every date
    alone (day and month in sorted order, so a swap still agrees); every pair of name/text
    fields; every name with the year of every date, and with its day and month; every exact
    field with every text field (a place within a postcode). A true pair is missed only
    when every pass has a broken token; H takes the blocks smallest first up to a budget
    (protocols.linked.compare), so a pass whose blocks are large costs little."""
    fields = list(fields)
    dates = [k for k, f in enumerate(fields) if f.kind == "date"]
    words = [k for k, f in enumerate(fields) if f.kind in ("name", "text")]
    names = [k for k, f in enumerate(fields) if f.kind == "name"]
    exact = [k for k, f in enumerate(fields) if f.kind == "exact"]
    texts = [k for k, f in enumerate(fields) if f.kind == "text"]
    out: list[tuple[tuple[int, str], ...]] = [((d, "sorted"),) for d in dates]
    out += [((a, ""), (b, "")) for x, a in enumerate(words) for b in words[x + 1 :]]
    out += [((n, ""), (d, "year")) for n in names for d in dates]
    out += [((n, ""), (d, "daymonth")) for n in names for d in dates]
    out += [((e, ""), (t, "")) for e in exact for t in texts]
    if len(out) == 0:  # a single name or text field: block on its token alone
        out = [((w, ""),) for w in words]
    return out


# -- encoding ------------------------------------------------------------------------------


def subkey(key: bytes, purpose: str) -> bytes:
    """A 32-byte key for one purpose ("field 2", "block 0"), derived by keyed BLAKE2b."""
    return hashlib.blake2b(purpose.encode(), key=key, digest_size=32).digest()


def _distinct(values: pa.Array | list[str | None]) -> tuple[list[str], np.ndarray]:
    """Distinct non-missing values and, per record, the index of its value (-1 if missing):
    every keyed hash below is computed once per distinct value, never per record."""
    array = values if isinstance(values, pa.Array) else pa.array(values, type=pa.string())
    encoded = pc.dictionary_encode(array)
    if isinstance(encoded, pa.ChunkedArray):
        encoded = encoded.combine_chunks()
    codes = encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    return encoded.dictionary.to_pylist(), codes


def _tags_of(distinct: list[str], key: bytes) -> np.ndarray:
    """8-byte keyed BLAKE2b of each distinct value as uint64, lowest bit set (never 0)."""
    copy = hashlib.blake2b(key=key, digest_size=8).copy
    digests = []
    for value in distinct:
        h = copy()
        h.update(value.encode())
        digests.append(h.digest())
    tags = np.frombuffer(b"".join(digests), dtype="<u8").astype(np.uint64)
    return tags | np.uint64(1)


def _take(table: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Rows of `table` per record code; missing (-1) gives zeros (the "missing" encoding)."""
    padded = np.concatenate([table, np.zeros((1, *table.shape[1:]), dtype=table.dtype)])
    return padded[codes]  # code -1 picks the zero row appended last


def keyed_tags(values: pa.Array | list[str | None], key: bytes) -> np.ndarray:
    """8-byte keyed BLAKE2b of each value as uint64 (lowest bit set); 0 for a missing value."""
    distinct, codes = _distinct(values)
    return _take(_tags_of(distinct, key), codes)


def bigrams(text: str) -> set[str]:
    padded = f"_{text}_"
    return {padded[k : k + 2] for k in range(len(padded) - 1)}


def grams(text: str, kind: str) -> set[str]:
    """What a filter holds: padded bigrams, and for names also their letters, so that a
    transposition in a short name (Olha, Loha) still leaves most of the filter in common."""
    return bigrams(text) | (set(text) if kind == "name" else set())


def _filters_of(distinct: list[str], kind: str, key: bytes) -> np.ndarray:
    """(distinct, BLOOM_WORDS) packed Bloom filters, bit b in word b // 64 at b % 64."""
    hashes = HASHES[kind]
    every = sorted({g for value in distinct for g in grams(value, kind)})
    copy = hashlib.blake2b(key=key, digest_size=2 * hashes).copy
    where = np.zeros((len(every), hashes), dtype=np.int64)
    for g, gram in enumerate(every):
        h = copy()
        h.update(gram.encode())
        where[g] = np.frombuffer(h.digest(), dtype="<u2") % BLOOM_BITS
    index = {gram: g for g, gram in enumerate(every)}
    rows, cols = [], []
    for v, value in enumerate(distinct):
        for gram in grams(value, kind):
            rows.append(v)
            cols.append(index[gram])
    bits = np.zeros((len(distinct), BLOOM_BITS), dtype=bool)
    if rows:
        r = np.repeat(np.asarray(rows), hashes)
        bits[r, where[np.asarray(cols)].ravel()] = True
    return np.packbits(bits, axis=1, bitorder="little").view("<u8").astype(np.uint64)


def _flip(filters: np.ndarray, present: np.ndarray, flip: float, rng: np.random.Generator) -> None:
    """BLIP in place: each bit of each present filter flipped independently with probability
    `flip`. The gaps between flipped bits of a Bernoulli process are geometric, so drawing them
    gives exactly that distribution without a random number per bit."""
    rows = np.flatnonzero(present)
    total = len(rows) * BLOOM_BITS
    if not total or not flip:
        return
    chunks, reached = [], -1
    while reached < total - 1:
        gaps = rng.geometric(flip, size=int(total * flip * 1.05) + 64)
        positions = reached + np.cumsum(gaps)
        chunks.append(positions[positions < total])
        reached = int(positions[-1])
    positions = np.concatenate(chunks)
    bit = positions % BLOOM_BITS
    masks = np.left_shift(np.uint64(1), (bit % 64).astype(np.uint64))
    np.bitwise_xor.at(filters, (rows[positions // BLOOM_BITS], bit // 64), masks)


def bloom(
    values: pa.Array | list[str | None],
    kind: str,
    key: bytes,
    flip: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """(n, BLOOM_WORDS) uint64 Bloom filters; rows of missing values are all zero."""
    distinct, codes = _distinct(values)
    filters = _take(_filters_of(distinct, kind, key), codes)
    _flip(filters, codes >= 0, flip, rng)
    return filters


def _date_variants(value: str) -> list[str]:
    """The date, the date with day and month sorted, and the date with each digit blanked."""
    day_month = "".join(sorted((value[4:6], value[6:8])))
    return [value, value[:4] + day_month, *(f"{d}:{value[:d]}?{value[d + 1 :]}" for d in range(8))]


def date_tags(values: pa.Array | list[str | None], key: bytes) -> np.ndarray:
    """(n, DATE_TAGS): the date, day and month sorted, and each digit blanked in turn."""
    distinct, codes = _distinct(values)
    variants = [_date_variants(v) for v in distinct]
    columns = [
        _tags_of([row[c] for row in variants], subkey(key, f"date {c}")) for c in range(DATE_TAGS)
    ]
    table = np.stack(columns, 1) if distinct else np.zeros((0, DATE_TAGS), dtype=np.uint64)
    return _take(table, codes)


def encode_field(
    values: pa.Array,
    kind: str,
    key: bytes,
    flip: float = FLIP,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """One normalised field of every record as (n, width(kind)) uint64 words."""
    if kind in ("name", "text"):
        rng = rng or np.random.default_rng(secrets.randbits(128))
        return bloom(values, kind, key, flip, rng)
    if kind == "date":
        return date_tags(values, key)
    return keyed_tags(values, key)[:, None]


def _token_codes(column: pa.Array, kind: str, part: str) -> tuple[np.ndarray, np.ndarray]:
    """Distinct blocking tokens of one field (part), as an object array, and each record's
    token index (-1 if missing)."""
    distinct, codes = _distinct(column)
    tokens = [block_token(kind, value, part) for value in distinct]
    names, inverse = np.unique(np.asarray(tokens, dtype=object), return_inverse=True)
    table = np.append(inverse.astype(np.int64), -1)
    return names, table[codes]


def blocking_keys(columns: list[pa.Array], fields: list[LinkField], key: bytes) -> np.ndarray:
    """(n, len(passes)) keyed tags; 0 where a field of the pass is missing. Each pass's
    tag is keyed BLAKE2b of its tokens joined by a unit separator, hashed once per distinct
    combination."""
    n = len(columns[0]) if columns else 0
    tokens: dict[tuple[int, str], tuple[np.ndarray, np.ndarray]] = {}
    out = []
    for p, parts in enumerate(passes(fields)):
        for f, part in parts:
            if (f, part) not in tokens:
                tokens[f, part] = _token_codes(columns[f], fields[f].kind, part)
        present = np.ones(n, dtype=bool)
        combined = np.zeros(n, dtype=np.int64)  # mixed radix: one digit per part
        for f, part in parts:
            names, codes = tokens[f, part]
            present &= codes >= 0
            combined = combined * len(names) + codes
        combos, inverse = np.unique(combined[present], return_inverse=True)
        pieces = []
        for f, part in reversed(parts):  # decode the last digit first
            names = tokens[f, part][0]
            combos, digit = np.divmod(combos, len(names))
            pieces.insert(0, names[digit])
        joined = pieces[0]
        for piece in pieces[1:]:
            joined = joined + "\x1f" + piece
        tags = np.zeros(n, dtype=np.uint64)
        tags[present] = _tags_of(joined.tolist(), subkey(key, f"block {p}"))[inverse.ravel()]
        out.append(tags)
    return np.stack(out, 1) if out else np.zeros((n, 0), dtype=np.uint64)


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
