"""What the SR and the secondary capture share: the result they carry, their series, and
the source's header prepared to be copied into them.

Both objects join the source image's study (same Study Instance UID, the patient and
study modules copied) in a series of their own, made by "pneumoscope" and described as
AI-generated, research use, so that a PACS files them beside the X-ray and a reader sees
at once what they are.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pydicom.uid import UID, generate_uid

from pneumoscope.core import __version__
from pneumoscope.data.dicom import AI_MANUFACTURER
from pneumoscope.inference.scoring import Prediction

MANUFACTURER = AI_MANUFACTURER  # read back as "not a film" by the intended-use rules
NOTICE = "AI RESULT - RESEARCH USE, NOT FOR DIAGNOSIS"
SR_DESCRIPTION = "AI pneumonia report - research use, not for diagnosis"
SC_DESCRIPTION = "AI pneumonia overlay - research use, not for diagnosis"
SR_SERIES_NUMBER = 9001  # high numbers: a viewer lists the AI series after the acquired ones
SC_SERIES_NUMBER = 9002

# type 2 attributes of the patient and general study modules: present, possibly empty
_TYPE2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)
_REQUIRED = ("StudyInstanceUID", "SOPClassUID", "SOPInstanceUID")


class SourceError(ValueError):
    """The source DICOM cannot anchor results (no study, no SOP instance); the message names
    the missing attribute only, never a value."""


@dataclass(frozen=True)
class ResultInfo:
    """One image's AI result as the DICOM objects report it."""

    probability: float  # calibrated probability of pneumonia
    label: str  # the run's class name at its threshold (NORMAL / PNEUMONIA)
    threshold: float
    threshold_policy: str
    model_id: str
    ood: bool | None = None  # None: the run has no out-of-distribution guard
    ood_score: float | None = None
    outside_note: str = ""  # analysed although outside the intended use (--allow): why
    version: str = __version__

    @property
    def pneumonia(self) -> bool:
        """Pneumonia present at the run's threshold: the rule predict's label follows."""
        return self.probability >= self.threshold

    @classmethod
    def from_prediction(cls, prediction: Prediction, threshold_policy: str) -> ResultInfo:
        """From a ``status == "ok"`` Prediction and the run's ``threshold_policy``."""
        if prediction.status != "ok" or prediction.probability is None:
            raise ValueError(f"no result to report: the prediction's status is {prediction.status}")
        return cls(
            probability=float(prediction.probability),
            label=prediction.label,
            threshold=float(prediction.threshold),
            threshold_policy=threshold_policy,
            model_id=prediction.model_id,
            ood=prediction.ood,
            ood_score=prediction.ood_score,
            outside_note=prediction.note,
        )


@dataclass
class Series:
    """A result series: its UID, number and description, handing out instance numbers."""

    number: int
    description: str
    uid: str = field(default_factory=generate_uid)
    _counter: itertools.count = field(default_factory=lambda: itertools.count(1), repr=False)

    def next_instance(self) -> int:
        return next(self._counter)


def sr_series() -> Series:
    return Series(SR_SERIES_NUMBER, SR_DESCRIPTION)


def sc_series() -> Series:
    return Series(SC_SERIES_NUMBER, SC_DESCRIPTION)


def source_header(source: Dataset) -> Dataset:
    """A copy of the source without its pixels, type 2 patient/study attributes present (empty
    when the source lacks them), ready to be copied from; SourceError if it has no study."""
    missing = [k for k in _REQUIRED if not str(source.get(k, "") or "").strip()]
    if missing:
        raise SourceError(
            f"the DICOM file has no {', '.join(missing)}: there is no study to add results to"
        )
    invalid = [k for k in _REQUIRED if not UID(str(source.get(k)).strip()).is_valid]
    if invalid:  # a UID names output folders and files: digits and dots only
        raise SourceError(f"the DICOM file's {', '.join(invalid)} is not a valid UID")
    header = Dataset()
    for elem in source:
        if elem.tag.group < 0x7FE0:  # everything before the pixel data
            header.add(copy.deepcopy(elem))
    for keyword in _TYPE2:
        if keyword not in header:
            setattr(header, keyword, None)
    return header


def neutral(header: Dataset) -> Dataset:
    """The header with its patient and study values emptied, for highdicom's constructors:
    they check names, dates and sex on the way in (and log a name they doubt), while the
    values are copied verbatim afterwards by ``join_study``."""
    out = copy.deepcopy(header)
    for keyword in _TYPE2:
        setattr(out, keyword, None)
    return out


def join_study(target: Dataset, header: Dataset) -> None:
    """Copy the patient and study modules of ``target``'s own IOD (patient, general study,
    patient study, clinical trial) from the source header, as the source has them."""
    proxy = copy.deepcopy(header)
    proxy.SOPClassUID = target.SOPClassUID
    target.copy_patient_and_study_information(proxy)


def reference(source: Dataset) -> Dataset:
    """An SOP reference item (class and instance UID) to the source image."""
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    return item
