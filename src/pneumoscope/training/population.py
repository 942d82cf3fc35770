"""The training population written into the model card: whose films the model learnt from.

The intended-use rules compare a DICOM header with it (the age rule above all), so it says,
per source, what is known and how: ages and views the images' headers or CSV list gave
(the manifest's ``age`` and ``view`` columns), else what the public set is known to hold
(:data:`KNOWN_SETS`, recognised by layout, the pediatric set also by its file names), else
nothing. Ages over all sources are known only when every source's are.
"""

from __future__ import annotations

import pandas as pd

from pneumoscope.data.cache import Cache
from pneumoscope.data.layouts.class_folders import has_pediatric_names
from pneumoscope.data.records import ADULT_AGE, MAX_AGE
from pneumoscope.model.contract import PopulationSource, TrainingPopulation

KERMANY = "Kermany 2018 pediatric chest X-rays (Guangzhou)"
# What the public sets hold, where their files do not say: (dataset, age groups, ages, views)
KNOWN_SETS: dict[str, dict] = {
    "kermany": dict(dataset=KERMANY, age_groups=["child"], ages=(1.0, 5.0), views=["AP"]),
    "medmnist": dict(  # PneumoniaMNIST: the same films, resized
        dataset=f"PneumoniaMNIST (MedMNIST), from the {KERMANY}",
        age_groups=["child"],
        ages=(1.0, 5.0),
        views=["AP"],
    ),
    "covid19-pneumonia": dict(
        dataset="Chest X-Ray Covid-19 & Pneumonia (Kaggle)",
        age_groups=["child", "adult"],
        ages=None,
        views=["FRONTAL"],
    ),
    "rsna": dict(
        dataset="RSNA Pneumonia Detection Challenge (NIH ChestX-ray14)",
        age_groups=["adult"],
        ages=None,
        views=["PA", "AP"],
    ),
}
_GROUP_AGES = {"child": (0.0, ADULT_AGE - 1), "adult": (ADULT_AGE, MAX_AGE)}  # completed years


def training_population(cache: Cache, split: str = "train") -> TrainingPopulation:
    """The population of ``cache``'s ``split`` rows, source by source."""
    rows = cache.manifest[cache.manifest["split"] == split]
    layouts = {s.get("name"): s.get("layout", "") for s in _source_info(cache)}
    sources = [
        _source(str(name), layouts.get(name, ""), group)
        for name, group in rows.groupby("source", sort=True)
    ]
    return combine(sources)


def _source_info(cache: Cache) -> list[dict]:
    data = cache.info.data
    return [s for s in data.get("sources", []) if isinstance(s, dict)]


def _known_set(layout: str, rows: pd.DataFrame) -> str:
    """The KNOWN_SETS key of a source: its layout, or "kermany" for class folders whose
    files carry the pediatric set's names."""
    if layout in KNOWN_SETS:
        return layout
    if layout in ("class-folders", "") and has_pediatric_names(rows["path"].astype(str).tolist()):
        return "kermany"
    return ""


def _source(name: str, layout: str, rows: pd.DataFrame) -> PopulationSource:
    known = KNOWN_SETS.get(_known_set(layout, rows), {})
    src = PopulationSource(name=name, dataset=known.get("dataset", ""), layout=layout)
    src.images = int(len(rows))
    groups = sorted({g for g in _texts(rows, "age_group") if g in _GROUP_AGES})
    src.age_groups = groups or list(known.get("age_groups", []))
    ages = pd.to_numeric(rows.get("age", pd.Series(dtype=float)), errors="coerce").dropna()
    if len(ages):
        src.age_min, src.age_max = float(ages.min()), float(ages.max())
        src.age_from = "the images' headers or list"
    elif known.get("ages"):
        src.age_min, src.age_max = known["ages"]
        src.age_from = "the dataset's description"
    views = sorted({view_name(v) for v in _texts(rows, "view")})
    src.views = views or list(known.get("views", []))
    return src


def view_name(text: str) -> str:
    """A listed view as the rules read it: "AP ERECT" and "AP SUPINE" are AP, "PA" PA, a
    frontal film whose projection was not recorded FRONTAL; others (LL, LATERAL) as given.
    (adult_public lists such views; kept verbatim they made a joint run "not frontal only"
    and switched its lateral rule off.)"""
    t = text.upper().strip()
    words = t.replace(",", " ").replace("/", " ").split()
    if words and words[0] in ("AP", "PA"):
        return words[0]
    return "FRONTAL" if "FRONTAL" in words else t


def _texts(rows: pd.DataFrame, column: str) -> list[str]:
    """The column's non-empty text values (none when the manifest lacks the column)."""
    values = rows.get(column, [])
    return [v.strip() for v in values if isinstance(v, str) and v.strip()]


def combine(sources: list[PopulationSource]) -> TrainingPopulation:
    """All sources together: age groups and views pooled; ages from each source's range,
    else its age groups' bounds, and unknown when any source has neither."""
    pop = TrainingPopulation(sources=sources)
    pop.age_groups = sorted({g for s in sources for g in s.age_groups})
    pop.views = list(dict.fromkeys(v for s in sources for v in s.views))
    ranges = [_range(s) for s in sources]
    if sources and all(r is not None for r in ranges):
        pop.age_min = min(r[0] for r in ranges)
        pop.age_max = max(r[1] for r in ranges)
    return pop


def _range(src: PopulationSource) -> tuple[float, float] | None:
    if src.age_min is not None and src.age_max is not None:
        return src.age_min, src.age_max
    bounds = [_GROUP_AGES[g] for g in src.age_groups if g in _GROUP_AGES]
    if not bounds:
        return None
    return min(b[0] for b in bounds), max(b[1] for b in bounds)
