"""Duplicate detection: exact hashes of decoded pixels, 256-bit perceptual hashes, the
exhaustive near-pair search, and the threshold on real X-rays."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from pneumoscope.data.dedupe import (
    NEAR_THRESHOLD,
    PHASH_BITS,
    exact_hash,
    find_duplicates,
    hamming,
    hex_to_words,
    near_pairs,
    perceptual_hash,
    popcount,
)
from pneumoscope.data.layouts.base import patient_from_name
from pneumoscope.data.preprocess import decode_gray
from tests.helpers import fake_xray


def test_exact_hash_sees_pixels_not_files(tmp_path):
    gray = fake_xray(np.random.default_rng(0), True, 64)
    cv2.imwrite(str(tmp_path / "a.png"), gray)
    cv2.imwrite(str(tmp_path / "b.png"), cv2.merge([gray, gray, gray]))  # equal channels
    cv2.imwrite(str(tmp_path / "c.bmp"), gray)
    hashes = {exact_hash(decode_gray(tmp_path / n)) for n in ("a.png", "b.png", "c.bmp")}
    assert len(hashes) == 1
    other = gray.copy()
    other[0, 0] ^= 1  # one pixel, one grey level
    assert exact_hash(other) not in hashes
    # the shape is part of the hash: same bytes, other shape, other image
    assert exact_hash(gray.reshape(32, 128)) != exact_hash(gray)


def test_perceptual_hash_is_256_bits_and_survives_re_encoding():
    gray = fake_xray(np.random.default_rng(1), False, 224)
    h = perceptual_hash(gray)
    assert len(h) == PHASH_BITS // 4
    _, jpg = cv2.imencode(".jpg", cv2.resize(gray, (256, 256)), [cv2.IMWRITE_JPEG_QUALITY, 85])
    copy = cv2.imdecode(jpg, cv2.IMREAD_GRAYSCALE)
    d = hamming(hex_to_words([h]), hex_to_words([perceptual_hash(copy)]))[0]
    assert d <= NEAR_THRESHOLD
    flipped = perceptual_hash(np.ascontiguousarray(gray[:, ::-1]))
    assert hamming(hex_to_words([h]), hex_to_words([flipped]))[0] > 3 * NEAR_THRESHOLD


def test_popcount_fallback_matches_numpy():
    x = np.random.default_rng(0).integers(0, 2**63, size=(50, 4), dtype=np.uint64)
    lut = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)
    expected = lut[x.view(np.uint8).reshape(50, 4, 8)].sum(-1)
    np.testing.assert_array_equal(popcount(x), expected)
    assert hex_to_words(["ff" * 32]).shape == (1, 4)
    assert popcount(hex_to_words(["ff" * 32])).sum() == 256


def test_near_pairs_is_exhaustive_across_blocks():
    rng = np.random.default_rng(2)
    words = rng.integers(0, 2**63, size=(70, 4), dtype=np.uint64)
    # plant near copies: flip a few bits of some rows
    for src, dst, bits in [(0, 69, 3), (5, 6, 0), (10, 40, 9), (33, 34, 12)]:
        words[dst] = words[src]
        for b in range(bits):
            words[dst, b % 4] ^= np.uint64(1) << np.uint64(b * 7 % 64)
    i, j, d = near_pairs(words, threshold=10, block=8)  # many blocks, odd boundaries
    full = hamming(words[:, None, :], words[None, :, :])
    bi, bj = np.nonzero(np.triu(full <= 10, k=1))
    assert sorted(zip(i.tolist(), j.tolist(), strict=True)) == sorted(
        zip(bi.tolist(), bj.tolist(), strict=True)
    )
    assert {(0, 69), (5, 6), (10, 40)} <= set(zip(i.tolist(), j.tolist(), strict=True))
    assert (d == full[i, j]).all() and (i < j).all()
    assert len(near_pairs(words, threshold=-1)[0]) == 0  # -1: exact only


def test_find_duplicates_links_exact_as_a_star_and_near_between_contents():
    base = fake_xray(np.random.default_rng(3), True, 96)
    other = fake_xray(np.random.default_rng(4), False, 96)
    near = np.clip(base.astype(int) + 3, 0, 255).astype(np.uint8)  # a brightness change
    images = [base, other, base, base, near]
    dups = find_duplicates(
        [exact_hash(g) for g in images], [perceptual_hash(g) for g in images], NEAR_THRESHOLD
    )
    pairs = {(a, b, k) for a, b, k in dups.pairs[["a", "b", "kind"]].itertuples(index=False)}
    assert {(0, 2, "exact"), (0, 3, "exact"), (0, 4, "near")} <= pairs
    assert not any(1 in (a, b) for a, b, _ in pairs)
    assert dups.cluster.tolist() == [0, 1, 0, 0, 0]


@pytest.mark.realdata
def test_real_pixel_identical_files_are_found(shared_data):
    """The pediatric test split holds 6 of the 30 pixel-identical pairs (3-channel JPEGs)."""
    files = sorted((shared_data / "chest_xray_224" / "test").rglob("*.jpeg"))
    assert len(files) == 624
    grays = [decode_gray(f) for f in files]
    assert grays[0].ndim == 2
    by_hash: dict[str, list[str]] = {}
    for f, g in zip(files, grays, strict=True):
        by_hash.setdefault(exact_hash(g), []).append(f.name)
    groups = sorted(sorted(v) for v in by_hash.values() if len(v) > 1)
    assert len(groups) == 6
    assert ["NORMAL2-IM-0095-0001.jpeg", "NORMAL2-IM-0096-0001.jpeg"] in groups
    assert ["person128_bacteria_606.jpeg", "person128_bacteria_607.jpeg"] in groups


@pytest.mark.realdata
def test_real_threshold_pairs_copies_and_not_different_patients(shared_data):
    """Re-encoded copies (gray, 256 px, JPEG 85, as the second data set made them) are
    within the threshold; images of different patients are not."""
    files = sorted((shared_data / "chest_xray_224" / "train" / "PNEUMONIA").glob("*.jpeg"))
    chosen, seen = [], set()
    for f in files[::7]:
        p = patient_from_name(f.name)
        if p not in seen:
            seen.add(p)
            chosen.append(f)
        if len(chosen) == 120:
            break
    grays = [decode_gray(f) for f in chosen]
    copies = []
    for g in grays:
        _, jpg = cv2.imencode(".jpg", cv2.resize(g, (256, 256)), [cv2.IMWRITE_JPEG_QUALITY, 85])
        copies.append(cv2.imdecode(jpg, cv2.IMREAD_GRAYSCALE))
    h = hex_to_words([perceptual_hash(g) for g in grays])
    hc = hex_to_words([perceptual_hash(c) for c in copies])
    assert hamming(h, hc).max() <= NEAR_THRESHOLD // 2
    i, _, _ = near_pairs(h, NEAR_THRESHOLD)
    assert len(i) == 0  # 120 patients, 7140 pairs, none near
