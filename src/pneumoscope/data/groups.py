"""Groups: the unit that a split may never cut.

Images of one patient and copies of one image (exact or near duplicates, within or
across sources) end up in one group, by union-find over both kinds of link. Patient
ids are namespaced by their source (``pediatric:person12``), because two sources'
numbering schemes say nothing about each other: ``person12`` of one set and of another
are different people unless their images are duplicates.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np


class UnionFind:
    """Disjoint sets over 0..n-1; the root of a set is its smallest member."""

    def __init__(self, n: int):
        self.parent = np.arange(n, dtype=np.int64)

    def find(self, i: int) -> int:
        parent = self.parent
        root = i
        while parent[root] != root:
            root = int(parent[root])
        while parent[i] != root:  # path compression
            parent[i], i = root, int(parent[i])
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            lo, hi = (ra, rb) if ra < rb else (rb, ra)
            self.parent[hi] = lo

    def union_pairs(self, a: Iterable[int], b: Iterable[int]) -> None:
        for x, y in zip(a, b, strict=True):
            self.union(int(x), int(y))

    def roots(self) -> np.ndarray:
        return np.array([self.find(i) for i in range(len(self.parent))], dtype=np.int64)


def patient_key(source: str, patient: str) -> str:
    """The patient id namespaced by its source."""
    return f"{source}:{patient}"


def build_groups(
    sources: Sequence[str],
    patients: Sequence[str],
    links_a: Iterable[int] = (),
    links_b: Iterable[int] = (),
) -> np.ndarray:
    """Group root (smallest row index of the group) for each row: rows with the same
    namespaced patient, and rows joined by a link (a duplicate pair), share a group."""
    uf = UnionFind(len(patients))
    first: dict[str, int] = {}
    for i, key in enumerate(patient_key(s, p) for s, p in zip(sources, patients, strict=True)):
        uf.union(first.setdefault(key, i), i)
    uf.union_pairs(links_a, links_b)
    return uf.roots()


def group_names(roots: np.ndarray) -> np.ndarray:
    """Readable, stable group ids ``g000001`` numbered in order of each group's first row."""
    _, first_pos, inverse = np.unique(roots, return_index=True, return_inverse=True)
    rank = np.argsort(np.argsort(first_pos))  # rank of each unique root by first appearance
    return np.array([f"g{r + 1:06d}" for r in rank[inverse]], dtype=object)
