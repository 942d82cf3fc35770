"""What a model card says to people, apart from the contract that says what a run is.

The intended-use statement is written into every card (``model.json``'s
``intended_use``), shown on the page, in /v1/model, the report and the DICOM results; the
contract (``model/contract.py``) only carries it.
"""

from __future__ import annotations

from typing import Protocol

INTENDED_USE = (
    "Research and decision support, not a medical device: the probability of pneumonia on "
    "one frontal (AP or PA) chest radiograph (CR, DX or a digitised film) of a patient like "
    "those the model was trained on (see its training population). Not for CT, MR or other "
    "modalities, lateral views, other body parts, multi-frame objects or ages outside the "
    "training population: DICOM inputs that are so are refused unless allowed (--allow)."
)


class _Population(Protocol):
    def summary(self) -> str: ...


def intended_use_text(population: _Population | None) -> str:
    """The card's intended-use statement, naming the training population when known."""
    if population is None:
        return INTENDED_USE
    return f"{INTENDED_USE} Trained on {population.summary()}."
