"""The exact multi-index hash search (near_index): the pigeonhole condition on its settings,
pairs identical to the exhaustive search on planted boundary copies and on real X-rays,
and a setting one flip short of the condition missing a pair it must find."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pneumoscope.data.dedupe import (
    choose_near_method,
    find_duplicates,
    hamming,
    hex_to_words,
    near_pairs,
    perceptual_hash,
    search_near_pairs,
)
from pneumoscope.data.near_index import (
    MAX_B,
    MAX_PROBES,
    MultiHash,
    _search,
    balanced_codes,
    bit_order,
    exact_multihash,
    index_near_pairs,
)
from pneumoscope.data.preprocess import decode_gray

THRESHOLDS = (0, 8, 24, 40)


def _random_words(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, np.iinfo(np.uint64).max, size=(n, 4), dtype=np.uint64, endpoint=True)


def _flipped(row: np.ndarray, bits) -> np.ndarray:
    out = row.copy()
    for b in bits:
        out[b // 64] ^= np.uint64(1) << np.uint64(b % 64)
    return out


def _triples(i, j, d) -> list[tuple[int, int, int]]:
    return list(zip(i.tolist(), j.tolist(), d.tolist(), strict=True))


def test_exactness_condition_is_the_pigeonhole_bound():
    assert MultiHash(13, 19, 1).is_exact(24, 256)  # 24 // 13 = 1
    assert MultiHash(13, 19, 1).is_exact(25, 256)
    assert not MultiHash(13, 19, 0).is_exact(24, 256)
    assert not MultiHash(12, 21, 1).is_exact(24, 256)  # 24 // 12 = 2
    assert MultiHash(12, 21, 2).is_exact(24, 256)
    assert MultiHash(25, 10, 0).is_exact(24, 256) and not MultiHash(24, 10, 0).is_exact(24, 256)
    assert MultiHash(1, 57, 0).is_exact(0, 256)
    assert not MultiHash(14, 19, 1).is_exact(24, 256)  # 266 bits: substrings overlap
    assert not MultiHash(4, MAX_B + 1, 6).is_exact(24, 256)  # FAISS would drop bits
    assert MultiHash(13, 19, 1).probes == 13 * (1 + 19)
    assert MultiHash(12, 21, 2).probes == 12 * (1 + 21 + 210)


@pytest.mark.parametrize("threshold", [0, 1, 8, 24, 40, 100, 127])
@pytest.mark.parametrize("n", [100, 10_000, 1_000_000])
def test_exact_multihash_is_exact_and_affordable(threshold, n):
    s = exact_multihash(threshold, n)
    assert s is not None and s.is_exact(threshold, 256) and s.probes <= MAX_PROBES
    assert s.nflip == min(threshold // s.nhash, s.b)


def test_exact_multihash_settings_for_the_default_threshold():
    # measured best for 256-bit codes at threshold 24: one flip over 13 substrings
    assert exact_multihash(24, 1_000_000) == MultiHash(13, 19, 1)
    assert exact_multihash(0, 1_000_000).nflip == 0
    with pytest.raises(ValueError, match="threshold"):
        exact_multihash(-1, 10)
    with pytest.raises(ValueError, match="no exact multi-hash setting"):
        index_near_pairs(_random_words(np.random.default_rng(0), 10), 24, MultiHash(12, 21, 1))


def test_auto_chooses_exhaustive_when_small_and_the_index_when_large():
    assert choose_near_method(1_000, 24) == "exhaustive"
    assert choose_near_method(1_000_000, 24) == "index"
    assert choose_near_method(1_000_000, -1) == "exhaustive"
    assert choose_near_method(1_000_000, 127) == "exhaustive"  # no fast exact setting
    with pytest.raises(ValueError, match="method"):
        search_near_pairs(_random_words(np.random.default_rng(0), 4), 24, "faiss")


def test_balanced_codes_keep_every_distance():
    rng = np.random.default_rng(1)
    words = _random_words(rng, 300)
    words[:, 0] &= np.uint64(0xFF)  # 56 constant bits: they are the least informative
    setting = MultiHash(13, 15, 1)
    order = bit_order(words, setting)
    assert sorted(order.tolist()) == list(range(256))
    assert set(range(8, 64)) <= set(order[13 * 15 :].tolist())  # constant bits left out
    codes = balanced_codes(words, setting)
    assert codes.shape == (301, 32) and not codes[-1].any()  # zero padding row
    bits = np.unpackbits(codes[:-1], axis=1, bitorder="little").astype(np.int32)
    d_codes = np.abs(bits[:50, None, :] - bits[None, :50, :]).sum(-1)
    np.testing.assert_array_equal(d_codes, hamming(words[:50, None], words[None, :50]))


def _spread_pair(base: np.ndarray, setting: MultiHash, per_substring: list[int]) -> np.ndarray:
    """A copy of packed code ``base`` with per_substring[h] bits flipped in substring h."""
    bits = np.unpackbits(base, bitorder="little")
    for h, k in enumerate(per_substring):
        bits[h * setting.b : h * setting.b + k] ^= 1
    return np.packbits(bits, bitorder="little")


def test_the_condition_is_tight_one_flip_short_misses_a_pair():
    """Distance 24 spread as 2 bits in each of 12 substrings: 12 x 21 bits with 2 flips
    (exact) finds it, with 1 flip (24 // 12 = 2 > 1, refused) it is never a candidate;
    13 x 19 with 1 flip finds the worst spread for 13 substrings (11 x 2 + 2 x 1)."""
    rng = np.random.default_rng(2)
    codes = rng.integers(0, 256, size=(201, 32), dtype=np.uint8)
    codes[-1] = 0
    for setting, spread, found in [
        (MultiHash(12, 21, 2), [2] * 12, True),
        (MultiHash(12, 21, 1), [2] * 12, False),
        (MultiHash(13, 19, 1), [2] * 11 + [1, 1], True),
        (MultiHash(13, 19, 0), [2] * 11 + [1, 1], False),
    ]:
        c = codes.copy()
        c[150] = _spread_pair(c[3], setting, spread)
        i, j = _search(c, 200, 24, setting, threads=1, chunk=64, stats={})
        assert ((3, 150) in set(zip(i.tolist(), j.tolist(), strict=True))) is found, setting


def _planted(rng: np.random.Generator, threshold: int, n: int = 3000):
    """Uniform codes with copies at exactly threshold and threshold + 1 bits (and a chain
    of copies), so the boundary decides; (words, pairs at threshold, pairs beyond it)."""
    words = _random_words(rng, n)
    perm = rng.permutation(n)
    inside, outside = set(), set()
    for k in range(60):
        src, dst = int(perm[2 * k]), int(perm[2 * k + 1])
        dist = threshold + k % 2
        words[dst] = _flipped(words[src], rng.choice(256, dist, replace=False))
        (outside if k % 2 else inside).add((min(src, dst), max(src, dst)))
    a, b, c = (int(x) for x in perm[200:203])  # a chain: a - b at threshold, b - c at 0
    words[b] = _flipped(words[a], rng.choice(256, threshold, replace=False))
    words[c] = words[b]
    inside |= {tuple(sorted(p)) for p in [(a, b), (b, c), (a, c)]}
    return words, inside, outside


@pytest.mark.parametrize("threshold", THRESHOLDS)
def test_index_gives_the_exhaustive_pairs_on_planted_boundary_copies(threshold):
    words, inside, outside = _planted(np.random.default_rng(threshold), threshold)
    expected = _triples(*near_pairs(words, threshold))
    pairs = {(i, j) for i, j, _ in expected}
    assert inside <= pairs and not outside & pairs
    for setting in (exact_multihash(threshold, len(words)), exact_multihash(threshold, 10**6)):
        got = index_near_pairs(words, threshold, setting, threads=1, chunk=257)
        assert _triples(*got) == expected, setting  # same pairs, distances and order
    assert _triples(*search_near_pairs(words, threshold, "index", threads=2)) == expected


def test_index_handles_tiny_inputs():
    words = _random_words(np.random.default_rng(3), 2)
    for n in (0, 1):
        assert all(len(a) == 0 for a in index_near_pairs(words[:n], 24))
    assert all(len(a) == 0 for a in index_near_pairs(words, -1))
    words[1] = words[0]
    i, j, d = index_near_pairs(words, 0)
    assert (i.tolist(), j.tolist(), d.tolist()) == ([0], [1], [0])
    assert i.dtype == np.int64 and d.dtype == np.int32


def _real_files(shared: Path) -> list[Path]:
    """3,568 real films: the pediatric NORMAL and test PNEUMONIA films, the NORMAL copies
    the second set made of them (gray, 256 px, JPEG 85) and its adult COVID-19 films."""
    ped, mix = shared / "chest_xray_224", shared / "chest_xray_covid19_pneumonia_256" / "Data"
    return sorted(
        [*ped.glob("*/NORMAL/*.jpeg"), *ped.glob("test/PNEUMONIA/*.jpeg")]
        + [*mix.glob("*/NORMAL/*.jpg"), *mix.glob("*/COVID19/*.jpg")]
    )


@pytest.mark.realdata
def test_index_gives_the_exhaustive_pairs_on_real_xrays(shared_data):
    files = _real_files(shared_data)
    assert len(files) == 3568
    phash = [perceptual_hash(decode_gray(f)) for f in files]
    words = hex_to_words(phash)
    counts = {}
    for threshold in THRESHOLDS:
        expected = _triples(*near_pairs(words, threshold))
        counts[threshold] = len(expected)
        for setting in (None, exact_multihash(threshold, 10**6)):
            got = index_near_pairs(words, threshold, setting, threads=2, chunk=1000)
            assert _triples(*got) == expected, (threshold, setting)
    assert counts == {0: 862, 8: 1595, 24: 1595, 40: 1602}  # every NORMAL film's copy
    sha1 = [str(k) for k in range(len(files))]  # all distinct: every pair is a near pair
    by_index = find_duplicates(sha1, phash, 24, method="index")
    by_exhaustive = find_duplicates(sha1, phash, 24, method="exhaustive")
    assert by_index.pairs.equals(by_exhaustive.pairs)
    np.testing.assert_array_equal(by_index.cluster, by_exhaustive.cluster)
