"""What the model may analyse: the intended-use rules read from a DICOM header.

A DICOM object that is no image (a report, a presentation state, an RT plan, a DICOMDIR,
no pixel data) is ``skipped``. An image the model was not made for is ``out_of_scope``,
with a reason naming each rule it breaks and the flag that relaxes it:

- ``modality``: a projection radiograph only: CR, DX, and secondary captures that look
  like one (SC/OT with a chest body part, or converted from film or a workstation);
  CT, MR, PT, US, NM, MG, XA, RT images and the rest are refused;
- ``body-part``: BodyPartExamined, when present, names the chest;
- ``view``: not a lateral (ViewPosition LL/RL/LATERAL, its view code, or a patient
  orientation along the anterior-posterior axis) when the model learnt from frontal films;
- ``multiframe``: one frame (with ``--allow multiframe`` the first frame is analysed);
- ``age``: the patient's age (PatientAge, else the study date minus the birth date) lies
  within the training population's ages, in completed years. A film whose header gives no
  age (a JPEG, a PNG, an anonymised DICOM) is read by the population check
  (:mod:`pneumoscope.model.population_check`): its estimated group (child or adult) must be
  one of the training population's age groups. The header's age, when there is one, wins
  over the estimate; the estimate is reported either way. A card without a population
  (runs of older releases, such as 0.1.0) cannot say, and the rule is then not applied
  (``notes`` says so, once per run).

A header that lacks a fact passes that rule: absent is not refused. `predict`, `explain`,
the service and the Ray engine all read their inputs through :func:`load_screened` or
:func:`screen_decoded`.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from pneumoscope.core.errors import UserError
from pneumoscope.data.dicom import (
    DicomHeader,
    is_dicom,
    is_dicom_bytes,
    not_image_reason,
    read_header,
)
from pneumoscope.data.preprocess import PreprocessConfig, preprocess_gray, try_decode_gray
from pneumoscope.model.contract import ModelCard
from pneumoscope.model.population_check import PopulationCheck, PopulationEstimate

RULES = ("modality", "body-part", "view", "multiframe", "age")
SKIPPED, OUT_OF_SCOPE = "skipped", "out_of_scope"
ANALYSED = "ok"  # outside a rule the user relaxed (--allow): analysed, with a note

RADIOGRAPHS = frozenset({"CR", "DX"})
CAPTURES = frozenset({"SC", "OT"})
# ConversionType of a capture made from a radiograph: digitised film, digital interface,
# digitised video, workstation (not scanned documents, drawings or synthetic images)
RADIOGRAPH_CONVERSIONS = frozenset({"DF", "DI", "DV", "WSD"})
_CHEST_WORDS = ("CHEST", "THORA", "TORAX", "LUNG", "PULMO", "BRUST", "POUMON")
_LATERAL_VIEWS = frozenset({"LL", "RL", "LAT", "LATERAL", "LLAT", "RLAT"})
_FRONTAL_VIEWS = frozenset({"AP", "PA"})
# Modality of images whose header omits it, from the SOP class name
_CLASS_MODALITIES = (
    ("Computed Radiography", "CR"),
    ("Digital X-Ray", "DX"),
    ("Secondary Capture", "SC"),
    ("CT ", "CT"),
    ("MR ", "MR"),
    ("Positron Emission", "PT"),
    ("Ultrasound", "US"),
    ("Nuclear Medicine", "NM"),
    ("Mammography", "MG"),
    ("X-Ray Angiographic", "XA"),
    ("RT Image", "RTIMAGE"),
)


@dataclass(frozen=True)
class Verdict:
    """Why an input is not analysed: ``status`` skipped or out_of_scope, the ``rules``
    it breaks (none for skipped) and one line for people; or, with status ``ANALYSED``,
    the note an input analysed only because its rules were relaxed (--allow) carries into
    every output (the CSV's note column, the service's answer, the DICOM report)."""

    status: str
    reason: str
    rules: tuple[str, ...] = ()


def parse_allow(values: Iterable[str] | None) -> frozenset[str]:
    """The ``--allow`` values as a set of rule names (UserError for an unknown one)."""
    allowed = set()
    for value in values or ():
        for name in str(value).replace(",", " ").split():
            rule = name.strip().lower().replace("_", "-")
            if rule not in RULES:
                raise UserError(f"--allow {name!r}: choose among {', '.join(RULES)}")
            allowed.add(rule)
    return frozenset(allowed)


@dataclass(frozen=True)
class IntendedUse:
    """The rules as one run applies them: the training population's ages and views from
    its card, and the rules the user relaxed (``allow``)."""

    allow: frozenset[str] = frozenset()
    ages: tuple[float, float] | None = None  # years, inclusive, in completed years
    population: str = ""  # the ages as people read them: "children aged 1-5 years"
    frontal_only: bool = True
    notes: tuple[str, ...] = ()  # what could not be checked, said once per run
    groups: tuple[str, ...] = ()  # the training population's age groups (child, adult)
    population_folder: str = ""  # the population check's folder; "" = no estimate
    _screened: threading.Event = field(default_factory=threading.Event, compare=False, repr=False)

    @classmethod
    def from_card(
        cls, card: ModelCard, allow: Iterable[str] = (), check: str | os.PathLike = ""
    ) -> IntendedUse:
        """The run's rules; ``check`` the population check's folder (the run's own or the
        shipped one, ``population_check.check_folder``) that estimates the group of a film
        whose header gives no age."""
        allowed = parse_allow(allow)
        pop = card.population
        if pop is None:
            note = (
                "the age rule is not applied: the model card records no training "
                "population (a run made by an older pneumoscope; train it again to add one)"
            )
            return cls(
                allowed, notes=() if "age" in allowed else (note,), population_folder=str(check)
            )
        ages = None
        if pop.age_min is not None and pop.age_max is not None:
            ages = (float(pop.age_min), float(pop.age_max))
        notes = ()
        if ages is None and "age" not in allowed:
            notes = ("the age rule is not applied: the training population's ages are unknown",)
        groups = tuple(g for g in pop.age_groups if g in ("child", "adult"))
        return cls(allowed, ages, pop.ages_text(), pop.frontal_only, notes, groups, str(check))

    def to_dict(self) -> dict:
        """For /v1/model: the rules, what is relaxed and what cannot be checked."""
        check = self.population_check()
        return {
            "rules": [r for r in RULES if r not in self.allow],
            "allowed": sorted(self.allow),
            "ages": list(self.ages) if self.ages else None,
            "population": self.population,
            "age_groups": list(self.groups),
            "population_check": check.summary() if check else None,
            "notes": list(self.notes),
        }

    def population_check(self) -> PopulationCheck | None:
        """The population check, loaded once per process (None when there is none)."""
        return PopulationCheck.cached(self.population_folder) if self.population_folder else None

    def estimate(self, gray: np.ndarray) -> PopulationEstimate | None:
        """The population check's estimate for a decoded film (None without a check)."""
        check = self.population_check()
        return check.estimate(gray) if check else None

    def judge_estimate(
        self, estimate: PopulationEstimate | None, header_age: bool
    ) -> Verdict | None:
        """The age rule from the image: out of scope (or, with --allow age, analysed with a
        note) when the estimated group is not one of the training population's; None when
        the header gave an age (it wins), when nothing is known, or within the population."""
        if estimate is None or header_age or not self.groups or estimate.group in self.groups:
            return None
        why = f"{estimate.describe()}; outside the training population ({self.population})"
        if "age" in self.allow:
            return _analysed_note([("age", why)])
        reason = f"not analysed: {why} [rule age: --allow age analyses it anyway]"
        return Verdict(OUT_OF_SCOPE, reason, ("age",))

    def screen(self, source: str | os.PathLike | bytes) -> Verdict | None:
        """The verdict for a file or upload, or None when it goes to the model (not DICOM,
        or an image within scope). A DICOM whose header cannot be read also gets None:
        the decoder then reports it as an error, in its own words."""
        return self.screen_header(source)[0]

    def screen_header(self, source: str | os.PathLike | bytes) -> tuple[Verdict | None, bool]:
        """``screen``'s verdict, and whether the header gave the patient's age (then the
        header, not the image, decides the age rule)."""
        try:
            if isinstance(source, bytes | bytearray):
                if not is_dicom_bytes(bytes(source)):
                    return None, False
            elif not is_dicom(source):
                return None, False
            header = read_header(source)
        except Exception:  # ImageReadError, or a header pydicom chokes on: the decoder says
            return None, False
        self._screened.set()
        return self.check(header), header.age_years is not None

    def mark_screened(self) -> None:
        """A DICOM header was screened by a copy of these rules elsewhere (a Ray worker)."""
        self._screened.set()

    def notes_for_inputs(self) -> list[str]:
        """``notes`` once a DICOM header was screened (they concern DICOM inputs only)."""
        return list(self.notes) if self._screened.is_set() else []

    def check(self, header: DicomHeader) -> Verdict | None:
        """Skipped (no image), out of scope (the rules it breaks), or None."""
        not_image = not_image_reason(header)
        if not_image:
            return Verdict(SKIPPED, not_image)
        checks = {
            "modality": _modality,
            "body-part": _body_part,
            "view": self._view,
            "multiframe": _multiframe,
            "age": self._age,
        }
        broken, relaxed = [], []
        for rule, check in checks.items():
            why = check(header)
            if why:
                (relaxed if rule in self.allow else broken).append((rule, why))
        if not broken:
            return _analysed_note(relaxed)
        reason = "; ".join(
            f"{why} [rule {rule}: --allow {rule} analyses it anyway]" for rule, why in broken
        )
        return Verdict(OUT_OF_SCOPE, f"not analysed: {reason}", tuple(r for r, _ in broken))

    def _view(self, h: DicomHeader) -> str | None:
        if not self.frontal_only:
            return None
        shown = lateral_view(h)
        return f"lateral view ({shown}); the model learnt from frontal films" if shown else None

    def _age(self, h: DicomHeader) -> str | None:
        if self.ages is None or h.age_years is None:
            return None
        lo, hi = self.ages
        years = math.floor(h.age_years)
        if math.floor(lo) <= years <= math.floor(hi):
            return None
        return (
            f"patient aged {_age_text(h.age_years)} (from {h.age_from}), outside the "
            f"training population ({self.population})"
        )


def _analysed_note(relaxed: list[tuple[str, str]]) -> Verdict | None:
    """The note of a film outside rules the user relaxed, or None when it breaks none."""
    if not relaxed:
        return None
    why = "; ".join(why for _, why in relaxed)
    flags = " ".join(f"--allow {rule}" for rule, _ in relaxed)
    note = f"outside the intended use, analysed because of {flags}: {why}"
    return Verdict(ANALYSED, note, tuple(r for r, _ in relaxed))


@dataclass
class Screened:
    """One input read as every engine reads it: the run's preprocessed ``pixels`` and
    status "ok" (``reason`` then holds the note of a film analysed only because a rule was
    relaxed, else ""), or no pixels and the status and reason that refuse it; with the
    population check's ``estimate`` whenever the film was decoded."""

    path: str
    pixels: np.ndarray | None
    status: str = "ok"
    reason: str = ""
    estimate: PopulationEstimate | None = None


def screen_decoded(
    path: str,
    gray: np.ndarray,
    cfg: PreprocessConfig,
    scope: IntendedUse | None,
    header: tuple[Verdict | None, bool] = (None, False),
) -> Screened:
    """A decoded film through the rules that need its pixels (the age estimated from the
    image), then preprocessed for the run; ``header`` is ``screen_header``'s answer."""
    verdict, header_age = header
    estimate = scope.estimate(gray) if scope is not None else None
    judged = scope.judge_estimate(estimate, header_age) if scope is not None else None
    if judged is not None and judged.status != ANALYSED:
        return Screened(path, None, judged.status, judged.reason, estimate)
    notes = [v.reason for v in (verdict, judged) if v is not None]
    return Screened(path, preprocess_gray(gray, cfg), "ok", "; ".join(notes), estimate)


def load_screened(
    path: str | os.PathLike, cfg: PreprocessConfig, scope: IntendedUse | None
) -> Screened:
    """The intended-use rules first (a DICOM's header), then the decoder, then the rules
    that read the pixels: how `predict`, `explain` and the Ray engine read a file, so one
    odd file never stops a batch."""
    header = scope.screen_header(path) if scope is not None else (None, False)
    verdict = header[0]
    if verdict is not None and verdict.status != ANALYSED:
        return Screened(str(path), None, verdict.status, verdict.reason)
    gray, err = try_decode_gray(path)
    if gray is None:
        return Screened(str(path), None, "error", err)
    return screen_decoded(str(path), gray, cfg, scope, header)


def modality_of(h: DicomHeader) -> str:
    """The header's Modality, else the one its SOP class implies ("" when neither says)."""
    if h.modality:
        return h.modality
    name = h.sop_class_name
    return next((m for key, m in _CLASS_MODALITIES if name.startswith(key)), "")


def is_chest(body_part: str) -> bool:
    text = body_part.upper()
    return any(word in text for word in _CHEST_WORDS)


def _modality(h: DicomHeader) -> str | None:
    modality = modality_of(h)
    if not modality or modality in RADIOGRAPHS:
        return None
    if modality in CAPTURES:
        if is_chest(h.body_part) or h.conversion_type in RADIOGRAPH_CONVERSIONS:
            return None
        how = f"conversion type {h.conversion_type}" if h.conversion_type else "no conversion type"
        return (
            f"modality {modality}: a secondary capture that is not a chest film "
            f"(no chest body part, {how})"
        )
    return f"modality {modality} is not a projection radiograph; the model reads CR and DX films"


def _body_part(h: DicomHeader) -> str | None:
    if not h.body_part or is_chest(h.body_part):
        return None
    return f"body part {h.body_part} is not the chest"


def lateral_view(h: DicomHeader) -> str:
    """What says the film is a lateral ("ViewPosition LL", ...), or "" when none does."""
    if h.view_position in _LATERAL_VIEWS:
        return f"ViewPosition {h.view_position}"
    if h.view_position in _FRONTAL_VIEWS:
        return ""
    if "lateral" in h.view_code and "decubitus" not in h.view_code:
        return f"view code {h.view_code!r}"
    axes = {v[:1] for v in h.patient_orientation if v}
    if len(h.patient_orientation) == 2 and axes & {"A", "P"} and not axes & {"L", "R"}:
        return "PatientOrientation " + "\\".join(h.patient_orientation)
    return ""


def _multiframe(h: DicomHeader) -> str | None:
    if h.frames <= 1:
        return None
    return f"a multi-frame object ({h.frames} frames); the model reads single radiographs"


def _age_text(years: float) -> str:
    if years < 2:
        return f"{round(years * 12)} months"
    return f"{math.floor(years)} years"
