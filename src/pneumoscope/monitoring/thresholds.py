"""What `monitor` alerts on: the limits a window of traffic must keep, with their defaults.

A settings model (the one settings layer), so each flag's --help is its field's description
and a wrong value is one line naming the flag. Imports nothing heavy: --help stays instant.
"""

from __future__ import annotations

from pydantic import Field

from pneumoscope.core.settings import Number, Settings, Whole


class Thresholds(Settings):
    """The limits a window is judged against; a window with fewer than ``min_requests``
    lines is reported but not judged (a few requests make any rate jump)."""

    drift_alpha: Number = Field(
        0.01,
        gt=0,
        lt=1,
        description="Drift alarm: a window's probabilities have drifted from the run's "
        "validation probabilities when the two-sample Kolmogorov-Smirnov test's p-value is "
        "below this.",
    )
    max_ood_rate: Number = Field(
        0.10,
        ge=0,
        le=1,
        description="Alarm when more than this share of the analysed films is flagged "
        "out-of-distribution by the run's OOD guard.",
    )
    max_refusal_rate: Number = Field(
        0.10,
        ge=0,
        le=1,
        description="Alarm when more than this share of the requests is refused as "
        "skipped (no image) or out_of_scope (a film the model was not made for).",
    )
    max_error_rate: Number = Field(
        0.05,
        ge=0,
        le=1,
        description="Alarm when more than this share of the requests failed (status error: "
        "unreadable uploads, 4xx and 5xx answers other than refusals).",
    )
    max_out_of_population_rate: Number = Field(
        0.10,
        ge=0,
        le=1,
        description="Alarm when more than this share of the decoded films is estimated (by "
        "the population check) to be of an age group outside the run's training population.",
    )
    min_requests: Whole = Field(
        20,
        ge=1,
        description="Windows with fewer audit lines than this are reported, not judged.",
    )


# the rate checks in table order: (a window's figure, the limit's field, the figure's name)
RATE_CHECKS = (
    ("error_rate", "max_error_rate", "error rate"),
    ("refusal_rate", "max_refusal_rate", "refusal rate"),
    ("ood_rate", "max_ood_rate", "OOD rate"),
    ("out_of_population_rate", "max_out_of_population_rate", "out-of-population rate"),
)
