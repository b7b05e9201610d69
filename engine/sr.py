"""DICOM Structured Reports of dcx results, stored back to the PACS (STOW-RS) or into a folder.

One Comprehensive SR (built with highdicom) per scored DICOM instance, in the source's study
and patient, in one series per study and model. Its content tree:

- the source image (study, series, SOP instance; also in the evidence sequence);
- the positive-class probability, the decision threshold, the decision (flagged or not);
- whether the image looked like the training data, when the row has ``in_distribution``;
- the model: architecture and dcx version (TID 4019 algorithm identification), model id;
- the statement that the result is not for diagnostic use.

Concepts without a standard code use the private scheme ``99DCX``. UIDs are derived from the
source SOP Instance UID and the model id, so a resent report replaces itself instead of piling
up duplicates. The report carries the patient module of its source (DICOM requires it): it
is written for the PACS; ``--sr-dir`` files hold the same.

``sr_status`` in the row says what happened: ``stored`` (STOW-RS), ``written`` (folder),
``stored+written``, or ``error: <reason>``; rows whose report is missing get it on the next
run, without being scored again.
"""
from __future__ import annotations

import copy
import io
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from dcx.core.card import dcx_version
from dcx.core.errors import DcxError
from dcx.core.files import atomic_path

from .dicomweb import InstanceError, run_all
from .results import RowSchema

SR_COLUMN = "sr_status"
SERIES_NUMBER = 9901
NOT_FOR_DIAGNOSIS = ("Not for diagnostic use. Research screening output of dcx, a machine-learning "
                     "classifier; it has not been cleared by any regulator and must not replace a "
                     "radiologist's reading.")


class ReportRowSchema(RowSchema):
    """The run's columns plus ``sr_status``."""

    @property
    def columns(self) -> list[str]:
        return super().columns + [SR_COLUMN]


@dataclass(frozen=True)
class ModelIdentity:
    arch: str
    version: str
    model_id: str
    positive: str

    @classmethod
    def of_card(cls, card) -> "ModelIdentity":
        return cls(card.arch, f"dcx {dcx_version()}", card.model_id, card.positive)


def _code(value: str, meaning: str, scheme: str = "99DCX"):
    from highdicom.sr import CodedConcept

    return CodedConcept(value=value, scheme_designator=scheme, meaning=meaning)


def report_uids(source_sop: str, study_uid: str, model_id: str) -> tuple[str, str]:
    """(series UID, SOP Instance UID) of the report: stable for the same source and model."""
    from pydicom.uid import generate_uid

    return (generate_uid(entropy_srcs=["dcx-sr-series", study_uid, model_id]),
            generate_uid(entropy_srcs=["dcx-sr", source_sop, model_id]))


def build_report(source, row: dict, model: ModelIdentity):
    """The SR (a pydicom Dataset) of ``row``, the result of the image whose header is ``source``."""
    import highdicom as hd
    from highdicom.sr import (CodeContentItem, ContainerContentItem, ImageContentItem, NumContentItem,
                              RelationshipTypeValues, TextContentItem)
    from pydicom.dataset import Dataset
    from pydicom.sr.codedict import codes

    source = _with_type2_attributes(source)
    contains = RelationshipTypeValues.CONTAINS
    unitless = _code("1", "no units", "UCUM")
    flagged = bool(row["flagged"])
    items = [
        ImageContentItem(name=_code("260753009", "Source", "SCT"),
                         referenced_sop_class_uid=source.SOPClassUID,
                         referenced_sop_instance_uid=source.SOPInstanceUID, relationship_type=contains),
        NumContentItem(name=_code("p-positive", f"Probability of {model.positive}"),
                       value=float(row["p_positive"]), unit=unitless, relationship_type=contains),
        NumContentItem(name=_code("threshold", "Decision threshold"), value=float(row["threshold"]),
                       unit=unitless, relationship_type=contains),
        CodeContentItem(name=_code("decision", "Screening decision"),
                        value=_code("flagged", "Flagged for review") if flagged
                        else _code("not-flagged", "Not flagged"), relationship_type=contains),
    ]
    if row.get("in_distribution") is not None:
        items.append(CodeContentItem(name=_code("in-distribution", "Image resembles the training data"),
                                     value=codes.SCT.Yes if _truthy(row["in_distribution"]) else codes.SCT.No,
                                     relationship_type=contains))
    items.append(TextContentItem(name=_code("model-id", "Model identifier"), value=str(row["model_id"]),
                                 relationship_type=contains))
    items.append(TextContentItem(name=codes.DCM.Comment, value=NOT_FOR_DIAGNOSIS, relationship_type=contains))
    root = ContainerContentItem(name=_code("18748-4", "Diagnostic imaging report", "LN"))
    root.ContentSequence = [*hd.sr.AlgorithmIdentification(name=f"dcx {model.arch}", version=model.version),
                            *items]
    series_uid, sop_uid = report_uids(str(source.SOPInstanceUID), str(source.StudyInstanceUID), model.model_id)
    report = hd.sr.ComprehensiveSR(
        evidence=[source], content=root, series_instance_uid=series_uid, series_number=SERIES_NUMBER,
        sop_instance_uid=sop_uid, instance_number=1, manufacturer="dcx", is_complete=True,
        series_description="dcx screening (not for diagnostic use)")
    scheme = Dataset()  # declares the private coding scheme, as PS3.3 C.12.1.1.4 asks
    scheme.CodingSchemeDesignator, scheme.CodingSchemeName = "99DCX", "dcx result concepts"
    scheme.CodingSchemeResponsibleOrganization = "dcx"
    report.CodingSchemeIdentificationSequence = [scheme]
    return report


#: Patient and study attributes an SR copies from its evidence; DICOM lets them be empty, and
#: archives (and DICOM JSON without a value) leave them out altogether.
_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
          "ReferringPhysicianName", "StudyID", "AccessionNumber")


def _with_type2_attributes(source):
    missing = [kw for kw in _TYPE2 if kw not in source]
    if not missing:
        return source
    source = copy.deepcopy(source)  # a shallow copy would share (and change) the elements
    for keyword in missing:
        setattr(source, keyword, "")
    return source


def _truthy(value) -> bool:
    return str(value).strip().lower() in ("true", "1", "yes")


def report_bytes(report) -> bytes:
    buffer = io.BytesIO()
    report.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


class Reporter:
    """Makes and delivers the reports of a run's rows: STOW-RS to ``store`` (a
    :class:`~dcx.engine.dicomweb.DicomWebClient`) and/or files in ``folder``.

    ``header(path)`` returns the source instance's attributes (WADO-RS metadata for DICOMweb
    rows, the file header for files). After a connection failure of ``store`` (its retries
    spent), the rest of the run marks reports as not sent instead of waiting on every row.
    """

    schema = ReportRowSchema

    def __init__(self, card, header: Callable[[str], object], *, store=None, folder: Path | None = None):
        if store is None and folder is None:
            raise ValueError("a Reporter needs a store, a folder or both")
        self.model = ModelIdentity.of_card(card)
        self.header, self.store, self.folder = header, store, folder
        self.done = "+".join(name for name, dest in (("stored", store), ("written", folder)) if dest is not None)
        self._store_down: str | None = None
        self._lock = threading.Lock()
        if folder is not None:
            try:
                Path(folder).mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise DcxError(f"cannot create --sr-dir {folder}: {exc.strerror or exc}") from exc

    def wants(self, row: dict) -> bool:
        """Whether ``row`` still lacks its report (scored DICOM rows only)."""
        return row["status"] == "ok" and row["format"] == "dicom" and row.get(SR_COLUMN) != self.done

    def send(self, work: list[tuple[str, dict]]) -> None:
        """Report every ``(source path, row)`` pair, setting each row's ``sr_status``."""
        def one(pair):
            path, row = pair
            row[SR_COLUMN] = self._deliver(path, row)

        with warnings.catch_warnings():  # pydicom / highdicom warn about header values, quoting
            warnings.simplefilter("ignore")  # them: patient names must not reach the logs
            run_all(one, work)

    def _deliver(self, path: str, row: dict) -> str:
        try:
            report = build_report(self.header(path), row, self.model)
            data = report_bytes(report)
            if self.folder is not None:
                with atomic_path(Path(self.folder) / f"{report.SOPInstanceUID}.dcm") as tmp:
                    tmp.write_bytes(data)
            if self.store is not None:
                with self._lock:
                    down = self._store_down
                if down:
                    return f"error: not stored ({down})"
                try:
                    self.store.store(data)
                except DcxError as exc:  # the server, not this report: stop trying this run
                    with self._lock:
                        self._store_down = f"STOW-RS server failed earlier in this run: {exc.message}"[:300]
                    return f"error: not stored ({exc.message})"[:300]
            return self.done
        except InstanceError as exc:
            return f"error: {exc}"[:300]
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # a header highdicom refuses is this row's problem, not the run's
            return f"error: {type(exc).__name__}: {exc}"[:300]


def file_header(path: str):
    """The header of a local DICOM file, without pixel data."""
    import pydicom

    return pydicom.dcmread(path, stop_before_pixels=True)
