"""The patient attributes that never go into a message, a log line or report.json.

Messages and reports quote series by UID, number and description only. Descriptions are free text that a site
may have filled with anything, so every header text this package quotes passes through `redact` first.
"""
from __future__ import annotations

import re
from typing import Iterable, List

#: Attributes that identify a patient (or lead to one): the check list of tests and of `redact`.
PATIENT_TAGS = (
    "PatientName", "PatientID", "IssuerOfPatientID", "OtherPatientIDs", "OtherPatientNames", "PatientBirthDate",
    "PatientBirthTime", "PatientBirthName", "PatientMotherBirthName", "PatientAge", "PatientSize",
    "PatientWeight", "PatientAddress", "PatientTelephoneNumbers", "PatientComments", "MilitaryRank",
    "EthnicGroup", "AccessionNumber", "StudyID", "StudyDate", "StudyTime", "SeriesDate", "AcquisitionDate",
    "ContentDate", "InstitutionName", "InstitutionAddress", "ReferringPhysicianName", "PerformingPhysicianName",
    "OperatorsName", "RequestingPhysician",
)
#: Shorter values (a sex "F", a study number "1") are too common to search for.
MIN_LENGTH = 3
REDACTED = "[redacted]"


def patient_values(dataset) -> List[str]:
    """The texts of the dataset's patient attributes (person names also by component), longest first."""
    values = set()
    for keyword in PATIENT_TAGS:
        value = dataset.get(keyword)
        if value is None:
            continue
        items = value if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue" else [value]
        for item in items:
            text = str(item).strip()
            values.add(text)
            values.update(part.strip() for part in re.split(r"[\^=]", text))
    return sorted((v for v in values if len(v) >= MIN_LENGTH), key=len, reverse=True)


def redact(text: str, values: Iterable[str]) -> str:
    """`text` with every patient value in it (any case) replaced by [redacted]."""
    for value in values:
        text = re.sub(re.escape(value), REDACTED, text, flags=re.IGNORECASE)
    return text
