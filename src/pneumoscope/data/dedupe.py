"""Duplicate images within and across sources: exact copies and near copies.

* exact: SHA-1 of the decoded full-resolution grayscale pixels (shape included), so a
  PNG and a JPEG-decoded-to-the-same-pixels file, or a 3-channel JPEG with equal
  channels and its gray twin, are one image, while file bytes and names do not matter;
* near: a 256-bit perceptual hash (``imagehash.phash``, hash_size 16: the sign of the
  low 16 x 16 DCT frequencies against their median) of the image normalised to a
  64 x 64 gray square (area interpolation), compared by Hamming distance.

Why 256 bits and threshold 24 (measured on ../shared/data; see notes/datasets.md):
chest X-rays all look alike, so the usual 64-bit phash is too coarse: between images
of *different* pediatric patients it already gave 207 pairs at distance <= 4 while the
re-encoded copies of the second set reach distance 4. With 256 bits the re-encoded,
re-sized copies lie at distance 0-8 (99.9% <= 6), JPEG quality 20, gamma 0.8/1.25,
contrast changes and blur stay <= 24, and the closest pair of images of two different
patients lies at 40 (one pair below that, at 0, is a real pixel-identical duplicate
filed under two patient ids). Copies with a crop, shift or rotation of more than about
1 degree are *not* found: a perceptual hash of the whole image does not survive them.

Near pairs are searched exhaustively for small N (``near_pairs``, the reference) and with
an exact multi-index hash (``near_index``, FAISS) for large N: ``search_near_pairs``
chooses by estimated time, and both give the same pairs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import cv2
import numpy as np
import pandas as pd

from pneumoscope.data.near_index import exact_multihash, exhaustive_seconds, index_near_pairs

PHASH_SIZE = 16  # imagehash hash_size: 16 x 16 = 256 bits
PHASH_BITS = PHASH_SIZE * PHASH_SIZE
THUMB_SIZE = 64  # the normalised square that is hashed (imagehash uses 4 x hash_size)
NEAR_THRESHOLD = 24  # default Hamming distance (of 256 bits) for a near duplicate
NEAR_METHODS = ("auto", "exhaustive", "index")
# Real phashes meet more candidates than uniform codes (skewed buckets; 4x on the two
# real folders): the index's estimate counts this many times the uniform candidates.
INDEX_SKEW = 4.0


def exact_hash(gray: np.ndarray) -> str:
    """SHA-1 hex of a decoded grayscale image, its shape included."""
    h = hashlib.sha1(f"{gray.shape[0]}x{gray.shape[1]}:".encode())
    h.update(np.ascontiguousarray(gray, dtype=np.uint8).tobytes())
    return h.hexdigest()


def hash_thumbnail(gray: np.ndarray) -> np.ndarray:
    """The normalised image that the perceptual hash sees: a 64 x 64 area-resampled square."""
    return cv2.resize(gray, (THUMB_SIZE, THUMB_SIZE), interpolation=cv2.INTER_AREA)


def perceptual_hash(gray: np.ndarray) -> str:
    """256-bit phash (64 hex digits) of the normalised thumbnail of ``gray``."""
    import imagehash
    from PIL import Image

    bits = imagehash.phash(Image.fromarray(hash_thumbnail(gray)), hash_size=PHASH_SIZE).hash
    # = str(ImageHash), which builds a 256-character bit string first (half the hash's cost)
    return np.packbits(bits.ravel()).tobytes().hex()


def hex_to_words(hexes: list[str] | np.ndarray) -> np.ndarray:
    """Hex hashes of equal length -> (N, words) uint64, for vectorised Hamming distances."""
    if len(hexes) == 0:
        return np.zeros((0, PHASH_BITS // 64), dtype=np.uint64)
    n_hex = len(hexes[0])
    if n_hex % 16 or any(len(h) != n_hex for h in hexes):
        raise ValueError("perceptual hashes must all have the same length, a multiple of 64 bits")
    raw = bytes.fromhex("".join(hexes))
    return np.frombuffer(raw, dtype=">u8").astype(np.uint64).reshape(len(hexes), n_hex // 16)


def popcount(x: np.ndarray) -> np.ndarray:
    """Set bits per uint64 element."""
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.bitwise_count(x)
    as_bytes = x.view(np.uint8).reshape(*x.shape, 8)
    return _BYTE_POPCOUNT[as_bytes].sum(axis=-1, dtype=np.uint8)


_BYTE_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamming distances between word arrays that broadcast (..., words)."""
    return popcount(np.bitwise_xor(a, b)).sum(axis=-1, dtype=np.int32)


def near_pairs(
    words: np.ndarray, threshold: int, block: int = 128
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs (i < j) with Hamming distance <= threshold: exhaustive, in row blocks.

    The reference search (nothing can be missed) and the faster one for small N: about
    0.4 s for 12,000 hashes on one core, growing with N^2 (about 35 s for 100,000);
    ``search_near_pairs`` switches to the exact index above the crossover.
    """
    n = len(words)
    out_i, out_j, out_d = [], [], []
    if threshold < 0 or n < 2:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty.astype(np.int32)
    cols = [np.ascontiguousarray(words[:, k]) for k in range(words.shape[1])]
    for start in range(0, n - 1, block):
        stop = min(start + block, n)
        # distances from rows start..stop-1 to every later row, one 64-bit word at a time
        d = np.zeros((stop - start, n - start - 1), dtype=np.uint16)
        for col in cols:
            d += popcount(col[start:stop, None] ^ col[None, start + 1 :])
        ii, cc = np.nonzero(d <= threshold)
        jj = start + 1 + cc
        upper = jj > start + ii  # column c is row start + 1 + c
        out_i.append(start + ii[upper])
        out_j.append(jj[upper])
        out_d.append(d[ii[upper], cc[upper]])
    return (
        np.concatenate(out_i).astype(np.int64),
        np.concatenate(out_j).astype(np.int64),
        np.concatenate(out_d).astype(np.int32),
    )


def choose_near_method(n: int, threshold: int, bits: int = PHASH_BITS) -> str:
    """ "index" when an exact multi-hash setting exists and is estimated faster for n codes
    (``INDEX_SKEW`` times the candidates of uniform codes), else "exhaustive"."""
    if threshold < 0 or n < 2:
        return "exhaustive"
    setting = exact_multihash(threshold, n, bits)
    if setting is None or setting.seconds(n, INDEX_SKEW) >= exhaustive_seconds(n):
        return "exhaustive"
    return "index"


def search_near_pairs(
    words: np.ndarray, threshold: int, method: str = "auto", threads: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs (i < j, sorted by i then j) within ``threshold`` bits, and their distances.

    ``method``: "exhaustive" (``near_pairs``), "index" (``near_index.index_near_pairs``:
    ValueError when no exact setting exists for the threshold) or "auto" (the faster by
    ``choose_near_method``). ``threads``: the index's query threads (default: the cores).
    """
    if method not in NEAR_METHODS:
        raise ValueError(f"method must be one of {', '.join(NEAR_METHODS)}, got {method!r}")
    if method == "auto":
        method = choose_near_method(len(words), threshold, 64 * words.shape[1])
    if method == "index":
        return index_near_pairs(words, threshold, threads=threads)
    return near_pairs(words, threshold)


@dataclass
class Duplicates:
    """Duplicate links between rows (indices into the hashed rows), and their clusters.

    ``pairs``: columns a, b (a < b), kind ("exact" or "near"), distance (phash bits).
    Exact copies are linked to the first row with the same pixels (a star, not every
    pair); near pairs are searched between distinct pixel contents only.
    ``cluster``: for each row, the smallest row index of its duplicate cluster (the
    connected component of all links; a row without duplicates is its own cluster).
    """

    pairs: pd.DataFrame
    cluster: np.ndarray
    threshold: int


def find_duplicates(
    sha1: list[str], phash: list[str], threshold: int, method: str = "auto"
) -> Duplicates:
    """Exact and near duplicates among rows with hashes ``sha1[i]``, ``phash[i]``;
    ``method``: the near-pair search (``search_near_pairs``)."""
    from pneumoscope.data.groups import UnionFind

    n = len(sha1)
    first: dict[str, int] = {}
    rep_of = np.empty(n, dtype=np.int64)
    for i, h in enumerate(sha1):
        rep_of[i] = first.setdefault(h, i)
    words = hex_to_words(list(phash))
    exact_b = np.flatnonzero(rep_of != np.arange(n))
    exact_a = rep_of[exact_b]
    exact_d = hamming(words[exact_a], words[exact_b]) if len(exact_b) else np.zeros(0, np.int32)
    reps = np.flatnonzero(rep_of == np.arange(n))
    ri, rj, rd = search_near_pairs(words[reps], threshold, method)
    pairs = pd.DataFrame(
        {
            "a": np.concatenate([exact_a, reps[ri]]).astype(np.int64),
            "b": np.concatenate([exact_b, reps[rj]]).astype(np.int64),
            "kind": ["exact"] * len(exact_b) + ["near"] * len(ri),
            "distance": np.concatenate([exact_d, rd]).astype(np.int32),
        }
    )
    uf = UnionFind(n)
    for a, b in zip(pairs["a"], pairs["b"], strict=True):
        uf.union(int(a), int(b))
    return Duplicates(pairs, uf.roots(), threshold)
