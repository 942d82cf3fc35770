"""The AI result as a DICOM Structured Report a PACS can file and show.

A Comprehensive SR holding a TID 1500 Measurement Report, built with ``highdicom``:

- observation context: the device "pneumoscope" (its model name the model id) and, in the
  measurement group, TID 4019 Algorithm Identification: name "pneumoscope", the package
  version, and as parameters the model id, the threshold and its policy;
- one TID 1501 measurement group for the source image: finding Pneumonia (SCT 233604007)
  in the lung, referencing the source image (its SOP class and instance UID);
- qualitative evaluations: Pneumonia = Present / Absent (SCT 52101004 / 272519000) at the
  run's threshold, and, when the run has an OOD guard, "Outside the training
  distribution" = Yes / No;
- measurements (UCUM "1", no units): the calibrated probability (DCM 122157 Probability),
  the threshold (DCM 122411 Threshold Value) and the OOD score.

There is no standard code for a model's out-of-distribution check, so those two concepts
use the private coding scheme ``99PNEUMOSCOPE``, declared in the Coding Scheme
Identification Sequence. The report is marked complete, preliminary and unverified: no
person has checked it.
"""

from __future__ import annotations

from highdicom.coding_schemes import CodingSchemeIdentificationItem
from highdicom.sr import (
    AlgorithmIdentification,
    CodedConcept,
    ComprehensiveSR,
    DeviceObserverIdentifyingAttributes,
    FindingSite,
    Measurement,
    MeasurementReport,
    MeasurementsAndQualitativeEvaluations,
    ObservationContext,
    ObserverContext,
    QualitativeEvaluation,
    SourceImageForMeasurement,
    SourceImageForMeasurementGroup,
    TrackingIdentifier,
)
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from pneumoscope.pacs.common import (
    MANUFACTURER,
    ResultInfo,
    Series,
    join_study,
    neutral,
    source_header,
    sr_series,
)

PRIVATE_SCHEME = "99PNEUMOSCOPE"
PNEUMONIA = CodedConcept("233604007", "SCT", "Pneumonia")
CHEST_XRAY = CodedConcept("399208008", "SCT", "Plain chest X-ray")
PRESENT = CodedConcept.from_code(codes.SCT.Present)
ABSENT = CodedConcept.from_code(codes.SCT.Absent)
YES = CodedConcept.from_code(codes.SCT.Yes)
NO = CodedConcept.from_code(codes.SCT.No)
PROBABILITY = CodedConcept.from_code(codes.DCM.Probability)
THRESHOLD = CodedConcept.from_code(codes.DCM.ThresholdValue)
NO_UNITS = CodedConcept.from_code(codes.UCUM.NoUnits)
OOD = CodedConcept("OOD", PRIVATE_SCHEME, "Outside the training distribution")
OOD_SCORE = CodedConcept("OODSCORE", PRIVATE_SCHEME, "Out-of-distribution score")
OUTSIDE = CodedConcept("OUTSIDEUSE", PRIVATE_SCHEME, "Analysed outside the intended use")
TRACKING_ID = "pneumonia classification"


def algorithm(info: ResultInfo) -> AlgorithmIdentification:
    """TID 4019: pneumoscope, its version, and the model id, threshold and policy."""
    return AlgorithmIdentification(
        name=MANUFACTURER,
        version=info.version,
        manufacturer=MANUFACTURER,
        parameters=[
            f"model_id={info.model_id}",
            f"threshold={info.threshold:.6f}",
            f"threshold_policy={info.threshold_policy}",
        ],
    )


def _observation_context(info: ResultInfo) -> ObservationContext:
    # one stable device UID per model: the same model is the same observer in every report
    device = DeviceObserverIdentifyingAttributes(
        uid=generate_uid(entropy_srcs=[MANUFACTURER, info.model_id]),
        name=MANUFACTURER,
        manufacturer_name=MANUFACTURER,
        model_name=info.model_id,
    )
    return ObservationContext(
        observer_device_context=ObserverContext(
            observer_type=codes.DCM.Device, observer_identifying_attributes=device
        )
    )


def _measurements(info: ResultInfo, source: Dataset, algo) -> list[Measurement]:
    image = SourceImageForMeasurement(source.SOPClassUID, source.SOPInstanceUID)
    values = [(PROBABILITY, info.probability), (THRESHOLD, info.threshold)]
    if info.ood_score is not None:
        values.append((OOD_SCORE, info.ood_score))
    return [
        Measurement(
            name=name,
            value=float(value),
            unit=NO_UNITS,
            algorithm_id=algo,
            referenced_images=[image],
        )
        for name, value in values
    ]


def _evaluations(info: ResultInfo) -> list[QualitativeEvaluation]:
    found = [QualitativeEvaluation(PNEUMONIA, PRESENT if info.pneumonia else ABSENT)]
    if info.ood is not None:
        found.append(QualitativeEvaluation(OOD, YES if info.ood else NO))
    if info.outside_note:  # a rule relaxed with --allow (age, view, ...): say it was
        found.append(QualitativeEvaluation(OUTSIDE, YES))
    return found


def measurement_report(info: ResultInfo, source: Dataset) -> MeasurementReport:
    """The TID 1500 content tree for one source image's result."""
    algo = algorithm(info)
    group = MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(uid=generate_uid(), identifier=TRACKING_ID),
        finding_type=PNEUMONIA,
        algorithm_id=algo,
        finding_sites=[FindingSite(CodedConcept.from_code(codes.SCT.Lung))],
        measurements=_measurements(info, source, algo),
        qualitative_evaluations=_evaluations(info),
        source_images=[SourceImageForMeasurementGroup(source.SOPClassUID, source.SOPInstanceUID)],
    )
    return MeasurementReport(
        observation_context=_observation_context(info),
        procedure_reported=CHEST_XRAY,
        imaging_measurements=[group],
    )


def _uses_private(info: ResultInfo) -> bool:
    return info.ood is not None or info.ood_score is not None or bool(info.outside_note)


def _private_scheme() -> list[CodingSchemeIdentificationItem]:
    """The declaration of the private scheme the OOD concepts use."""
    return [
        CodingSchemeIdentificationItem(
            designator=PRIVATE_SCHEME,
            name="pneumoscope concepts",
            responsible_organization=MANUFACTURER,
        )
    ]


def structured_report(source: Dataset, info: ResultInfo, series: Series | None = None) -> Dataset:
    """The Comprehensive SR for ``source`` (a DICOM image of the study): same study and
    patient, a new series (``series``, else a fresh one) and SOP instance."""
    header = source_header(source)
    series = series or sr_series()
    sr = ComprehensiveSR(
        evidence=[neutral(header)],
        content=measurement_report(info, header),
        series_instance_uid=series.uid,
        series_number=series.number,
        sop_instance_uid=generate_uid(),
        instance_number=series.next_instance(),
        manufacturer=MANUFACTURER,
        is_complete=True,
        series_description=series.description,
        manufacturer_model_name=info.model_id[:64],
        software_versions=info.version,
        coding_schemes=_private_scheme() if _uses_private(info) else None,
    )
    join_study(sr, header)
    return sr
