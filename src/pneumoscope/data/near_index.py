"""Exact near-pair search over binary codes with a multi-index hash (FAISS), for large N.

The exhaustive search in ``dedupe.near_pairs`` grows with N^2 (about 35 s for 100,000
perceptual hashes); this one indexes the codes in FAISS's ``IndexBinaryMultiHash`` and
asks it for every code within the threshold (``range_search``): work per code grows with
N / 2^b instead of N (b = 19 bits at threshold 24), so millions of codes take minutes.

Exact by the pigeonhole principle: cut the code into ``nhash`` disjoint substrings of
``b`` bits (bits left over belong to none). If two codes differ in <= r bits, the
substrings hold at most r of those differences between them, so at least one substring
differs in <= floor(r / nhash) bits. The index stores each code under each substring's
value (one hash table per substring) and, for a query, probes every value within
``nflip`` bit flips of each of the query's substrings; with ``nflip >= floor(r / nhash)``
every code within r bits shares a probed bucket, so it is a candidate, and FAISS keeps
the candidates whose full Hamming distance is <= r. Nothing is approximate: a setting
that fails the condition is refused (``MultiHash.is_exact``), and the pairs found are
checked again here with the exact distance.

Cost: each query makes ``probes = nhash * sum_{k<=nflip} C(b, k)`` hash-table look-ups,
and meets about ``probes * N / 2^b`` candidates on uniform codes. ``exact_multihash``
picks the exact setting of least estimated time for N (constants measured on this
project's machine: see ``SECONDS_PER_*``); for threshold 24 and 256 bits that is
13 substrings of 19 bits with one flip at 20,000 codes and more (4.7 s for 100,000 on one
core, against 35 s exhaustive). Settings over ``MAX_PROBES`` look-ups are never chosen.
Large thresholds are exact only at a cost near the exhaustive search's (threshold 40:
14 x 18 bits, 2 flips, 16 s against 10 s exhaustive for 50,000 codes): there
``dedupe.choose_near_method`` keeps the exhaustive search.

Real chest X-ray phashes are far from uniform: low DCT frequencies are nearly always 1
or 0, so substrings of consecutive bits would fill a few buckets. The bits are therefore
reordered before indexing (a permutation keeps every Hamming distance): sorted by their
entropy on the data, dealt to the substrings in turn, the least informative left out
(on the two real folders, 11,708 films: 22 candidates per query, against 125 with the
bits in their own order and 38 in a random order).

Memory: the codes, ``nhash`` hash tables of N ids (about 130 MB for 100,000 codes and 13
tables, growing linearly) and one query chunk's results; queries go in chunks, each
against the codes before it and itself, so every pair is met once from its later code.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from math import comb

import numpy as np

# FAISS reads a substring as the 64-bit word at its first byte shifted by the bit offset
# within that byte (0-7), so b <= 57 keeps all b bits of every substring in the hash.
MAX_B = 57
MAX_PROBES = 20_000  # look-ups per query above which a setting is refused (too slow)
# Measured with FAISS 1.15 on uniform 256-bit codes, one thread (see bench/dedupe.py):
SECONDS_PER_PROBE = 1.2e-7  # one hash-table look-up
SECONDS_PER_CANDIDATE = 4.4e-7  # one candidate: shortlist insert and full distance
SECONDS_PER_EXHAUSTIVE_PAIR = 7e-9  # dedupe.near_pairs, per pair of codes
QUERY_CHUNK = 2048  # queries per range_search call: bounds the results held at once
SAMPLE_ROWS = 65_536  # rows whose bit statistics choose the bit order


@dataclass(frozen=True)
class MultiHash:
    """A multi-index hash setting: ``nhash`` substrings of ``b`` bits, ``nflip`` flips."""

    nhash: int
    b: int
    nflip: int

    @property
    def probes(self) -> int:
        """Hash-table look-ups per query: every value within nflip flips, per substring."""
        return self.nhash * sum(comb(self.b, k) for k in range(self.nflip + 1))

    def is_exact(self, threshold: int, bits: int) -> bool:
        """True when every pair within ``threshold`` bits is sure to be found (pigeonhole)."""
        fits = 1 <= self.b <= MAX_B and self.nhash >= 1 and self.nhash * self.b <= bits
        return fits and self.nflip >= min(threshold // self.nhash, self.b)

    def seconds(self, n: int, skew: float = 1.0) -> float:
        """Estimated search time (one thread) for n codes that meet ``skew`` times the
        candidates of uniform codes (each pair is met once)."""
        candidates = skew * self.probes * (n / 2) / 2.0**self.b
        return n * (self.probes * SECONDS_PER_PROBE + candidates * SECONDS_PER_CANDIDATE)


def exhaustive_seconds(n: int) -> float:
    """Estimated time of the exhaustive search (``dedupe.near_pairs``) over n codes."""
    return n * (n - 1) / 2 * SECONDS_PER_EXHAUSTIVE_PAIR


def exact_settings(threshold: int, bits: int) -> Iterator[MultiHash]:
    """Every exact setting (least flips) for ``threshold`` whose probes stay affordable."""
    for nhash in range(1, bits + 1):
        nflip = threshold // nhash
        for b in range(1, min(MAX_B, bits // nhash) + 1):
            setting = MultiHash(nhash, b, min(nflip, b))
            if setting.probes <= MAX_PROBES:
                yield setting


def exact_multihash(threshold: int, n: int, bits: int = 256) -> MultiHash | None:
    """The exact setting of least estimated time for n codes (None: none affordable)."""
    if threshold < 0:
        raise ValueError(f"threshold must be >= 0, got {threshold}")
    return min(exact_settings(threshold, bits), key=lambda s: s.seconds(n), default=None)


def index_near_pairs(
    words: np.ndarray,
    threshold: int,
    setting: MultiHash | None = None,
    threads: int | None = None,
    chunk: int = QUERY_CHUNK,
    stats: dict | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs (i < j) of rows of ``words`` ((N, W) uint64) within ``threshold`` bits.

    The same pairs, distances and order (by i, then j) as ``dedupe.near_pairs``; raises
    ValueError when ``setting`` (default: ``exact_multihash``) is not exact or none exists.
    ``threads``: OpenMP threads of FAISS's queries (default: FAISS's own, the cores).
    ``stats``: a dict to fill with the setting, the seconds of each stage (prepare: bit
    order; add: index build; query: range searches; verify) and FAISS's probe counts.
    """
    words = np.ascontiguousarray(words, dtype=np.uint64)
    n, bits = len(words), 64 * words.shape[1]
    if threshold < 0 or n < 2:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty.astype(np.int32)
    setting = setting or exact_multihash(threshold, n, bits)
    if setting is None or not setting.is_exact(threshold, bits):
        raise ValueError(
            f"no exact multi-hash setting for threshold {threshold} of {bits} bits: {setting}"
        )
    stats = {} if stats is None else stats
    stats.update(setting=asdict(setting), probes_per_query=setting.probes)
    t0 = time.perf_counter()
    codes = balanced_codes(words, setting)
    stats["prepare_s"] = time.perf_counter() - t0
    found_i, found_j = _search(codes, n, threshold, setting, threads, chunk, stats)
    t0 = time.perf_counter()
    d = _distances(words, found_i, found_j)
    keep = d <= threshold  # FAISS checked them already: this is the independent check
    i, j, d = found_i[keep], found_j[keep], d[keep]
    order = np.lexsort((j, i))
    stats["verify_s"] = time.perf_counter() - t0
    return i[order], j[order], d[order]


def _search(
    codes: np.ndarray, n: int, threshold: int, setting: MultiHash, threads, chunk: int, stats
) -> tuple[np.ndarray, np.ndarray]:
    """(i, j) with i < j for every pair FAISS finds within threshold, chunk by chunk."""
    import faiss

    before = faiss.omp_get_max_threads()
    if threads:
        faiss.omp_set_num_threads(threads)
    faiss.cvar.indexBinaryHash_stats.reset()
    add_s = query_s = 0.0
    try:
        index = faiss.IndexBinaryMultiHash(8 * codes.shape[1], setting.nhash, setting.b)
        index.nflip = setting.nflip
        out_i, out_j = [], []
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            t0 = time.perf_counter()
            # slices of the padded array: FAISS reads up to 7 bytes past a code's end
            index.add(codes[start:stop])
            t1 = time.perf_counter()
            lims, _, ids = index.range_search(codes[start:stop], threshold + 1)  # d < radius
            query = np.repeat(np.arange(start, stop), np.diff(lims).astype(np.int64))
            earlier = ids < query  # each pair once, from its later row
            out_i.append(ids[earlier].astype(np.int64))
            out_j.append(query[earlier])
            add_s, query_s = add_s + t1 - t0, query_s + time.perf_counter() - t1
    finally:
        faiss.omp_set_num_threads(before)
    counts = faiss.cvar.indexBinaryHash_stats
    stats.update(add_s=add_s, query_s=query_s, candidates=int(counts.ndis))
    stats["threads"] = threads or before
    return np.concatenate(out_i), np.concatenate(out_j)


def _distances(words: np.ndarray, i: np.ndarray, j: np.ndarray, block: int = 1 << 16):
    """Exact Hamming distances of row pairs, from the original words (int32)."""
    d = np.empty(len(i), dtype=np.int32)
    for s in range(0, len(i), block):
        x = np.bitwise_xor(words[i[s : s + block]], words[j[s : s + block]])
        d[s : s + block] = np.unpackbits(x.view(np.uint8), axis=1).sum(axis=1)
    return d


def bit_order(words: np.ndarray, setting: MultiHash) -> np.ndarray:
    """Source bit of each indexed bit position: substring h is positions h*b .. h*b+b-1.

    Bits sorted by entropy on (a sample of) the data are dealt to the substrings in
    turn, so each substring gets as informative a mix as any other; the least
    informative bits fill the positions after the substrings, which no table reads.
    """
    step = max(1, len(words) // SAMPLE_ROWS)
    p = _bits(words[::step]).mean(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.nan_to_num(p * np.log2(p) + (1 - p) * np.log2(1 - p))
    ranked = np.argsort(-entropy, kind="stable")
    used = setting.nhash * setting.b
    # rank k goes to substring k % nhash, slot k // nhash
    k = np.arange(used)
    order = np.empty(len(ranked), dtype=np.int64)
    order[(k % setting.nhash) * setting.b + k // setting.nhash] = ranked[:used]
    order[used:] = ranked[used:]
    return order


def balanced_codes(words: np.ndarray, setting: MultiHash, block: int = 1 << 16) -> np.ndarray:
    """The codes with their bits in ``bit_order``, packed as FAISS reads them (LSB first),
    with one zero row of padding after the last code (FAISS reads past a code's end)."""
    order = bit_order(words, setting)
    codes = np.zeros((len(words) + 1, 8 * words.shape[1]), dtype=np.uint8)
    for s in range(0, len(words), block):
        rows = words[s : s + block]
        bits = _bits(rows)[:, order]
        codes[s : s + len(rows)] = np.packbits(bits, axis=1, bitorder="little")
    return codes


def _bits(words: np.ndarray) -> np.ndarray:
    """(N, 64 W) 0/1 uint8: bit k of word w is column 64 w + k."""
    as_bytes = np.ascontiguousarray(words, dtype="<u8").view(np.uint8)
    return np.unpackbits(as_bytes, axis=1, bitorder="little")
