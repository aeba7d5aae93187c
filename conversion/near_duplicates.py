"""Near-duplicate detection: MinHash over word shingles, banded LSH for candidates, exact Jaccard to confirm.

Two texts are near-duplicates when the Jaccard similarity of their sets of word 3-shingles (lower-cased
`\\w+` words, three in a row) is at least a threshold, 0.9 by default: a 100-word turn that differs in one
word scores 0.94, a 20-word one 0.71 (short texts differing in a word often differ in meaning).

Comparing every pair is quadratic (5·10⁹ pairs at 100k examples), so each text gets 60 minhashes in 10
bands of 6 rows; texts sharing any band are candidates. A pair at Jaccard 0.9 becomes a candidate with
probability 1 - (1 - 0.9⁶)¹⁰ = 0.9995 (0.999998 at 0.95), a pair at 0.5 with 0.15. Every candidate is
then confirmed by the exact Jaccard of the shingle sets, so nothing under the threshold is ever dropped.

Greedy, in order: a text is a near-duplicate when it is close to an earlier text that was kept; only
kept texts enter the buckets, so a run of copies costs one comparison each.

>>> near_duplicates(["the parcel never arrived at my flat in town, please help me find it",
...                  "the parcel never arrived at my flat in town, please help me find it!",
...                  "how do I change the PIN of my card"])
[None, 0, None]
"""

from __future__ import annotations

import re
import zlib
from array import array
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

__all__ = ["SHINGLE_WORDS", "ShingleSets", "near_duplicates"]

SHINGLE_WORDS = 3
_BANDS, _ROWS = 10, 6
_WORD = re.compile(r"\w+")
# Fixed odd multipliers and offsets: the same texts always hash alike, run after run.
_RANDOM = np.random.default_rng(20240601)
_MULTIPLIERS = _RANDOM.integers(1, 2**63, size=_BANDS * _ROWS, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
_OFFSETS = _RANDOM.integers(0, 2**63, size=_BANDS * _ROWS, dtype=np.uint64)
_SHINGLE_MIX = np.array([0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9], dtype=np.uint64)
_BAND_MIX = _RANDOM.integers(1, 2**63, size=_ROWS, dtype=np.uint64) * np.uint64(2) + np.uint64(1)

Hashes = npt.NDArray[np.uint64]


def near_duplicates(texts: Sequence[str], threshold: float = 0.9, *,
                    progress: Callable[[int], object] = lambda n: None) -> list[int | None]:
    """For each text, the index of the earlier kept text it nearly duplicates, or None when it is kept.

    The banding is tuned for thresholds around 0.9: far lower ones would miss many pairs.
    """
    if not texts:
        return []
    shingles = ShingleSets(texts)
    bands = _band_keys(shingles.minhashes()).tolist()
    buckets: list[dict[int, list[int]]] = [{} for _ in range(_BANDS)]
    duplicate_of: list[int | None] = []
    for index, keys in enumerate(bands):
        candidates = {kept for band, key in enumerate(keys) for kept in buckets[band].get(key, ())}
        duplicate_of.append(_closest(shingles, index, sorted(candidates), threshold))
        if duplicate_of[-1] is None:
            for band, key in enumerate(keys):
                buckets[band].setdefault(key, []).append(index)
        if index % 1000 == 999:
            progress(1000)
    progress(len(bands) % 1000)
    return duplicate_of


class ShingleSets:
    """The sorted, distinct 64-bit hashes of each text's word 3-shingles (one shingle for shorter texts),
    held end to end in one array: hashing and sorting run over every text at once, not text by text.

    >>> sets = ShingleSets(["a b c d", "a b c", "x"])
    >>> [len(sets[i]) for i in range(3)], sets.jaccard(0, 1)
    ([2, 1, 1], 0.5)
    """

    def __init__(self, texts: Sequence[str]) -> None:
        codes, lengths = _word_codes(texts)
        self.hashes, self.bounds = _distinct_per_text(_shingle_hashes(codes), lengths)

    def __len__(self) -> int:
        return len(self.bounds) - 1

    def __getitem__(self, index: int) -> Hashes:
        return self.hashes[self.bounds[index]:self.bounds[index + 1]]

    def jaccard(self, one: int, other: int) -> float:
        a, b = self[one], self[other]
        shared = np.intersect1d(a, b, assume_unique=True).size
        return float(shared / (a.size + b.size - shared))

    def minhashes(self) -> Hashes:
        """One row per text: the least of (a·h + b) mod 2⁶⁴ over its shingles h, for each of 60 pairs (a, b)."""
        table = np.empty((len(self), len(_MULTIPLIERS)), dtype=np.uint64)
        for column, (multiplier, offset) in enumerate(zip(_MULTIPLIERS, _OFFSETS)):
            table[:, column] = np.minimum.reduceat(self.hashes * multiplier + offset, self.bounds[:-1])
        return table


class _Codes(dict[str, int]):
    """Word -> CRC-32, filled on first sight: the same word always gets the same code, run after run."""

    def __missing__(self, word: str) -> int:
        code = self[word] = zlib.crc32(word.encode("utf-8", "surrogatepass"))
        return code


def _word_codes(texts: Sequence[str]) -> tuple[Hashes, npt.NDArray[np.int64]]:
    """Every text's word codes end to end (a text of fewer words padded to one shingle), and their counts."""
    codes = _Codes()
    flat = array("Q")  # 8 bytes a word; a list of the words themselves would take ~60
    lengths = np.empty(len(texts), dtype=np.int64)
    for index, text in enumerate(texts):
        found = _WORD.findall(text.lower())
        flat.extend(map(codes.__getitem__, found))
        flat.extend([0] * (SHINGLE_WORDS - len(found)))
        lengths[index] = max(len(found), SHINGLE_WORDS)
    return np.frombuffer(flat, dtype=np.uint64), lengths


def _shingle_hashes(codes: Hashes) -> Hashes:
    """A mixed 64-bit hash of each run of `SHINGLE_WORDS` codes (runs across two texts included)."""
    count = len(codes) - SHINGLE_WORDS + 1
    mixed: Hashes = codes[:count] * _SHINGLE_MIX[0]
    for k in range(1, SHINGLE_WORDS):
        mixed += codes[k:count + k] * _SHINGLE_MIX[k]
    mixed ^= mixed >> np.uint64(31)
    mixed *= np.uint64(0xBF58476D1CE4E5B9)
    mixed ^= mixed >> np.uint64(29)
    return mixed


def _distinct_per_text(mixed: Hashes, lengths: npt.NDArray[np.int64]) -> tuple[Hashes, npt.NDArray[np.int64]]:
    """Each text's distinct shingle hashes, sorted, end to end; and where each text's run starts and ends."""
    per_text = lengths - (SHINGLE_WORDS - 1)
    starts = np.cumsum(lengths) - lengths  # shingles that would run into the next text are left out
    # One sort of (text, hash) keys: the text's number in the high bits, the hash's top bits below.
    # Dropping a hash's low bits (17 at 100k texts) leaves 47: collisions stay around 2^-47 per pair.
    text_bits = max(1, len(lengths).bit_length())
    hash_bits = np.uint64(64 - text_bits)
    owner = np.repeat(np.arange(len(lengths), dtype=np.uint64), per_text)
    keys = np.sort((owner << hash_bits) | (mixed[np.repeat(starts, per_text) + _ranks(per_text)]
                                           >> np.uint64(text_bits)))
    fresh = np.ones(len(keys), dtype=bool)
    fresh[1:] = keys[1:] != keys[:-1]
    keys = keys[fresh]
    sizes = np.bincount((keys >> hash_bits).astype(np.int64), minlength=len(lengths))
    bounds: npt.NDArray[np.int64] = np.concatenate([[0], np.cumsum(sizes)])
    hashes: Hashes = keys & np.uint64((1 << int(hash_bits)) - 1)
    return hashes, bounds


def _ranks(sizes: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """0, 1, .., size-1 for each size, end to end."""
    total = int(sizes.sum())
    firsts = np.repeat(np.cumsum(sizes) - sizes, sizes)
    ranks: npt.NDArray[np.int64] = np.arange(total, dtype=np.int64) - firsts
    return ranks


def _band_keys(table: Hashes) -> Hashes:
    """One 64-bit key per band of `_ROWS` minhashes (equal bands, equal keys)."""
    rows = table.reshape(len(table), _BANDS, _ROWS)
    keys: Hashes = (rows * _BAND_MIX).sum(axis=2, dtype=np.uint64)
    return keys


def _closest(sets: ShingleSets, index: int, candidates: list[int], threshold: float) -> int | None:
    """The earliest candidate at or above the threshold: a size bound first, exact Jaccard second."""
    size = sets[index].size
    for kept in candidates:
        other = sets[kept].size
        if min(size, other) < threshold * max(size, other):
            continue  # Jaccard is at most the smaller size over the larger
        if sets.jaccard(index, kept) >= threshold:
            return kept
    return None
