"""DICOMweb in and out: find studies (QIDO-RS), fetch their images (WADO-RS), store results
(STOW-RS).

A hospital's radiographs live in a PACS, and most PACS speak DICOMweb over HTTP. This module
lets ``pneumoscope predict`` take a study from there and give results back, without a user
exporting files by hand:

    with connect(url, credentials=load_credentials()) as pacs:
        with fetched_study(pacs, study_uid) as study:      # a private temporary folder
            ...predict over study.folder by path...
        pacs.store([secondary_capture])                     # per-instance outcomes

The HTTP and DICOM parts are dicomweb-client's; what this module adds is the behaviour a
command line needs: every failure (server unreachable, 401, 404, a malformed answer) is one
:class:`~pneumoscope.core.errors.UserError` line, never a traceback; downloads are bounded
(matching instances per study, and bytes per instance, counted while they arrive, so an
oversized answer is cut off rather than held in memory); files are named by SOP Instance UID
only and live in a 0700 folder that is removed afterwards; and a STOW answer is read per
instance. No patient data (names, ids, birth dates) goes into a message or a log line.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian

from pneumoscope.core.errors import UserError

log = logging.getLogger(__name__)

RADIOGRAPH_MODALITIES: tuple[str, ...] = ("CR", "DX")
DEFAULT_TIMEOUT: tuple[float, float] = (5.0, 60.0)  # (connect, read) seconds
TOKEN_ENV = "PNEUMOSCOPE_DICOMWEB_TOKEN"
USER_ENV = "PNEUMOSCOPE_DICOMWEB_USER"
PASSWORD_ENV = "PNEUMOSCOPE_DICOMWEB_PASSWORD"

_LISTING_CAP = 10_000  # instances listed per study before the listing itself is refused
_MULTIPART_SLACK = 8 * 1024  # multipart headers and boundaries around one instance
_JSON_CAP = 64 * 2**20  # a search answer (QIDO-RS JSON) larger than this is refused
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_MODALITY = re.compile(r"^[A-Z0-9_]{1,16}$")
_STUDY_FIELDS = (
    "StudyInstanceUID",
    "StudyDate",
    "ModalitiesInStudy",
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
    "StudyDescription",
)
_INSTANCE_FIELDS = (
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "SOPClassUID",
    "Modality",
    "InstanceNumber",
)
_STOW_FAILURES = {  # PS3.18 table "Store Instances Response Failure Reason Values"
    0xA700: "refused: out of resources",
    0xA900: "error: data set does not match SOP class",
    0xC000: "error: cannot understand",
    0xC122: "referenced transfer syntax not supported",
    0x0110: "processing failure",
    0x0122: "referenced SOP class not supported",
}


# --- settings ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    """How to authenticate: a bearer token, or a user and password (HTTP basic auth).

    The secret never appears in ``repr`` or in any message.
    """

    kind: Literal["bearer", "basic"]
    secret: str = field(repr=False)
    user: str = ""

    def apply(self, session: requests.Session) -> None:
        if self.kind == "bearer":
            session.headers["Authorization"] = f"Bearer {self.secret}"
        else:
            session.auth = (self.user, self.secret)


@dataclass(frozen=True)
class Limits:
    """Bounds on what one retrieval may download; beyond them it is refused with a UserError.

    ``max_instances``: matching instances in one study (a chest X-ray study has a few; a CT
    series has hundreds). ``max_instance_bytes``: bytes of one instance as sent (checked
    while they arrive). ``max_studies``: studies one query may list.
    """

    max_instances: int = 100
    max_instance_bytes: int = 256 * 2**20
    max_studies: int = 1000


@dataclass(frozen=True)
class StudyInfo:
    """One study as a QIDO-RS search describes it (no patient attributes are kept)."""

    study_uid: str
    study_date: str | None
    modalities: tuple[str, ...]
    n_series: int | None
    n_instances: int | None
    description: str | None


@dataclass(frozen=True)
class InstanceInfo:
    """One instance of a study, as listed by QIDO-RS."""

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str | None
    modality: str | None
    instance_number: int | None


@dataclass(frozen=True)
class Skipped:
    """An instance of the study that was not fetched, and why (e.g. its modality)."""

    sop_uid: str
    reason: str


@dataclass
class RetrievedStudy:
    """A study fetched into ``folder``: one ``<SOP Instance UID>.dcm`` per file in ``files``."""

    study: StudyInfo
    folder: Path
    files: list[Path]
    skipped: list[Skipped]


@dataclass(frozen=True)
class StoreOutcome:
    """What the server said about one stored instance: ``ok``, and a failure reason or a
    warning in ``detail`` (empty when stored without comment)."""

    sop_uid: str
    ok: bool
    detail: str = ""


def load_credentials(
    token_file: str | os.PathLike | None = None,
    basic_auth_file: str | os.PathLike | None = None,
    environ: Mapping[str, str] | None = None,
) -> Credentials | None:
    """Credentials from a file or, when no file is given, from the environment.

    ``token_file`` holds a bearer token; ``basic_auth_file`` holds one line ``user:password``.
    Without files, ``PNEUMOSCOPE_DICOMWEB_TOKEN`` or ``PNEUMOSCOPE_DICOMWEB_USER`` and
    ``PNEUMOSCOPE_DICOMWEB_PASSWORD`` are used. None when nothing is given (no auth).
    Secrets are kept out of command lines and URLs on purpose.
    """
    if token_file and basic_auth_file:
        raise UserError("give either a token file or a user:password file, not both")
    if token_file:
        return Credentials("bearer", _read_secret(token_file, "token"))
    if basic_auth_file:
        user, sep, password = _read_secret(basic_auth_file, "user:password").partition(":")
        if not sep or not user:
            raise UserError(f"{basic_auth_file}: expected one line 'user:password'")
        return Credentials("basic", password, user)
    env = os.environ if environ is None else environ
    if env.get(TOKEN_ENV):
        return Credentials("bearer", env[TOKEN_ENV].strip())
    if env.get(USER_ENV):
        return Credentials("basic", env.get(PASSWORD_ENV, ""), env[USER_ENV])
    return None


def _read_secret(path: str | os.PathLike, what: str) -> str:
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "unreadable"
        raise UserError(f"cannot read the {what} file {path}: {reason}") from None
    if not text or "\n" in text:
        raise UserError(f"{path}: expected the {what} on one line")
    return text


def parse_date_range(text: str) -> str:
    """A DICOM date or date range for QIDO: ``YYYYMMDD``, ``YYYYMMDD-YYYYMMDD``, or an open
    range ``YYYYMMDD-`` / ``-YYYYMMDD``. Raises UserError for anything else."""
    value = text.strip()
    m = re.fullmatch(r"(\d{8})?(-)?(\d{8})?", value)
    if not value or value == "-" or not m or (m.group(1) and m.group(3) and not m.group(2)):
        raise UserError(f"date must be YYYYMMDD or YYYYMMDD-YYYYMMDD, got {text!r}")
    first, last = m.group(1), m.group(3)
    for day in (first, last):
        if day:
            try:
                datetime.strptime(day, "%Y%m%d")
            except ValueError:
                raise UserError(f"not a calendar date: {day} (in {text!r})") from None
    if first and last and first > last:
        raise UserError(f"date range ends before it starts: {text!r}")
    return value


def parse_modalities(value: str | Iterable[str] | None) -> tuple[str, ...]:
    """Modality codes such as ``"CR,DX"`` or ``["CR", "DX"]`` -> ``("CR", "DX")``."""
    if value is None:
        return ()
    parts = value.split(",") if isinstance(value, str) else list(value)
    codes = tuple(dict.fromkeys(p.strip().upper() for p in parts if p.strip()))
    for code in codes:
        if not _MODALITY.fullmatch(code):
            raise UserError(f"not a DICOM modality code: {code!r} (e.g. CR, DX)")
    return codes


def check_uid(uid: str, what: str = "Study Instance UID") -> str:
    """The UID, stripped, or a UserError saying it is not a DICOM UID (digits and dots)."""
    text = str(uid).strip()
    if len(text) > 64 or not _UID.fullmatch(text):
        raise UserError(f"not a valid {what}: {text[:80]!r} (digits and dots, at most 64)")
    return text


# --- the connection --------------------------------------------------------------------


class _TooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"answer larger than {limit} bytes")
        self.limit = limit


class _CappedRaw:
    """A urllib3 response body that raises _TooLarge once more than ``cap`` bytes were read
    (decoded bytes: a compressed answer is bounded by what it expands to)."""

    def __init__(self, raw, cap: int) -> None:
        self._raw, self._cap = raw, cap

    def stream(self, amt=None, decode_content=None):
        total = 0
        for chunk in self._raw.stream(amt, decode_content=decode_content):
            total += len(chunk)
            if total > self._cap:
                self._raw.close()
                raise _TooLarge(self._cap)
            yield chunk

    def __getattr__(self, name):
        return getattr(self._raw, name)


class DicomwebServer:
    """A DICOMweb service (QIDO-RS, WADO-RS, STOW-RS under one base URL).

    Make one with :func:`connect`, which also checks that the server answers. Every method
    raises :class:`UserError` with one line on failure.
    """

    def __init__(
        self,
        url: str,
        credentials: Credentials | None = None,
        timeout: float | tuple[float, float] = DEFAULT_TIMEOUT,
        limits: Limits | None = None,
        ca_bundle: str | os.PathLike | None = None,
    ) -> None:
        self.url = _check_url(url)
        self.limits = limits or Limits()
        self.timeout = timeout
        self._credentials = credentials
        self._session = requests.Session()
        if credentials is not None:
            credentials.apply(self._session)
        if ca_bundle is not None:
            self._session.verify = str(ca_bundle)
        self._cap = self.limits.max_instance_bytes + _MULTIPART_SLACK
        try:
            self._client = DICOMwebClient(
                self.url, session=self._session, timeout=timeout, callback=self._bound
            )
        except ValueError as exc:
            raise UserError(f"not a usable DICOMweb URL {self.url!r}: {exc}") from None
        # dicomweb-client retries failed requests (even a refused connection) with
        # exponential back-off, seconds apart; a command line should fail at once instead.
        self._client.set_http_retry_params(retry=False)

    def __enter__(self) -> DicomwebServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._session.close()

    def _bound(self, response: requests.Response, *args, **kwargs) -> requests.Response:
        """Response hook, run before the body is read: cap a search answer (JSON) at
        ``_JSON_CAP`` and anything else (an instance) at the per-instance limit."""
        accept = response.request.headers.get("Accept", "") if response.request else ""
        cap = _JSON_CAP if "json" in accept else self._cap
        length = response.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > cap:
            response.close()
            raise _TooLarge(cap)
        response.raw = _CappedRaw(response.raw, cap)
        return response

    def check(self) -> None:
        """Ask the server for one study: proves it is reachable, DICOMweb, and lets us in."""
        with self._answers("a test search"):
            self._client.search_for_studies(limit=1, fields=["StudyInstanceUID"])

    # --- QIDO-RS --------------------------------------------------------------------------

    def find_studies(
        self,
        study_uid: str | None = None,
        date: str | None = None,
        modality: str | Iterable[str] | None = None,
    ) -> list[StudyInfo]:
        """Studies matching every criterion given, sorted by date then UID.

        ``study_uid``: one Study Instance UID. ``date``: ``YYYYMMDD`` or a range
        ``YYYYMMDD-YYYYMMDD`` (see :func:`parse_date_range`). ``modality``: one or more codes
        (``"CR"``, ``"CR,DX"``); a study matches when it holds any of them. More than
        ``limits.max_studies`` matches is a UserError asking for a narrower query.
        """
        filters: dict[str, str] = {}
        if study_uid is not None:
            filters["StudyInstanceUID"] = check_uid(study_uid)
        if date is not None:
            filters["StudyDate"] = parse_date_range(date)
        found: dict[str, StudyInfo] = {}
        for code in parse_modalities(modality) or (None,):
            query = dict(filters, **({"ModalitiesInStudy": code} if code else {}))
            for study in self._search_studies(query):
                found.setdefault(study.study_uid, study)
        if len(found) > self.limits.max_studies:
            raise UserError(
                f"more than {self.limits.max_studies} studies match; narrow the query "
                "(a shorter date range, a modality)"
            )
        return sorted(found.values(), key=lambda s: (s.study_date or "", s.study_uid))

    def _search_studies(self, filters: dict[str, str]) -> list[StudyInfo]:
        with self._answers("the study search (QIDO-RS)"):
            answer = self._client.search_for_studies(
                search_filters=filters,
                fields=list(_STUDY_FIELDS),
                limit=self.limits.max_studies + 1,
            )
            return [_study_info(_from_json(item)) for item in answer]

    def study(self, study_uid: str) -> StudyInfo:
        """The one study with this UID, or a UserError saying the server has none."""
        uid = check_uid(study_uid)
        found = [s for s in self.find_studies(study_uid=uid) if s.study_uid == uid]
        if not found:
            raise UserError(f"the DICOMweb server at {self.url} has no study {uid}")
        return found[0]

    def find_instances(self, study_uid: str) -> list[InstanceInfo]:
        """Every instance of the study (all modalities), by series then instance number."""
        uid = check_uid(study_uid)
        with self._answers("the instance search (QIDO-RS)"):
            answer = self._client.search_for_instances(
                study_instance_uid=uid, fields=list(_INSTANCE_FIELDS), limit=_LISTING_CAP + 1
            )
            found = [_instance_info(_from_json(item), uid) for item in answer]
        if len(found) > _LISTING_CAP:
            raise UserError(f"study {uid} has more than {_LISTING_CAP} instances; not fetched")
        unique = {i.sop_uid: i for i in found}.values()
        return sorted(unique, key=lambda i: (i.series_uid, i.instance_number or 0, i.sop_uid))

    # --- WADO-RS --------------------------------------------------------------------------

    def select_instances(
        self, study_uid: str, modalities: Iterable[str] | str | None = RADIOGRAPH_MODALITIES
    ) -> tuple[list[InstanceInfo], list[Skipped]]:
        """The study's instances to fetch (those of ``modalities``; all when None or empty)
        and the ones left out, checked against ``limits.max_instances`` before any download.
        An instance whose modality the server does not say is kept."""
        wanted = parse_modalities(modalities)
        chosen: list[InstanceInfo] = []
        skipped: list[Skipped] = []
        for inst in self.find_instances(study_uid):
            if wanted and inst.modality and inst.modality.upper() not in wanted:
                skipped.append(Skipped(inst.sop_uid, f"modality {inst.modality} not fetched"))
            else:
                chosen.append(inst)
        if len(chosen) > self.limits.max_instances:
            raise UserError(
                f"study {check_uid(study_uid)} has {len(chosen)} matching instances, more "
                f"than the limit of {self.limits.max_instances}; nothing was fetched"
            )
        return chosen, skipped

    def retrieve(self, inst: InstanceInfo) -> Dataset:
        """One instance (WADO-RS, in the transfer syntax the server stores), at most
        ``limits.max_instance_bytes`` long, else a UserError naming its SOP Instance UID."""
        with self._answers(f"the retrieval (WADO-RS) of instance {inst.sop_uid}"):
            try:
                return self._client.retrieve_instance(inst.study_uid, inst.series_uid, inst.sop_uid)
            except _TooLarge:
                raise UserError(
                    f"instance {inst.sop_uid} is larger than the limit of "
                    f"{_mb(self.limits.max_instance_bytes)} per instance; not fetched"
                ) from None

    def iter_datasets(
        self, study_uid: str, modalities: Iterable[str] | str | None = RADIOGRAPH_MODALITIES
    ) -> Iterator[Dataset]:
        """The study's instances of ``modalities`` as pydicom Datasets, one at a time, within
        :attr:`limits` (the instance count is checked before the first download)."""
        chosen, _ = self.select_instances(study_uid, modalities)
        for inst in chosen:
            yield self.retrieve(inst)

    # --- STOW-RS --------------------------------------------------------------------------

    def store(
        self, datasets: Sequence[Dataset], study_uid: str | None = None
    ) -> list[StoreOutcome]:
        """Store instances (STOW-RS, one request) and say, per instance in order, whether the
        server took it. With ``study_uid`` the server refuses instances of other studies.

        A file meta header (Explicit VR Little Endian when none is set) is added to each
        dataset that lacks one. A refused instance is an outcome with ``ok=False``, not an
        exception; an unreachable server or a refused request (401, 404) is a UserError.
        """
        datasets = list(datasets)
        if not datasets:
            return []
        uid = check_uid(study_uid) if study_uid is not None else None
        for ds in datasets:
            _ensure_file_meta(ds)
        with self._answers(f"the store (STOW-RS) of {len(datasets)} instance(s)"):
            try:
                answer = self._client.store_instances(datasets, study_instance_uid=uid)
            except requests.HTTPError as exc:  # a refusal of every instance is an HTTP error
                answer = _stow_answer(exc.response)
                if answer is None:
                    raise
        return _outcomes(datasets, answer)

    # --- errors ---------------------------------------------------------------------------

    @contextmanager
    def _answers(self, what: str) -> Iterator[None]:
        """Turn what the network and the server can do wrong into one UserError line."""
        try:
            yield
        except _TooLarge as exc:
            raise UserError(
                f"the answer of the DICOMweb server at {self.url} to {what} is larger than "
                f"{_mb(exc.limit)}; refused"
            ) from None
        except requests.HTTPError as exc:
            raise UserError(self._http_message(exc.response, what)) from None
        except requests.exceptions.SSLError as exc:
            raise UserError(
                f"TLS failure with the DICOMweb server at {self.url}: {_short(exc)} "
                "(a hospital CA bundle may be needed)"
            ) from None
        except requests.exceptions.ConnectTimeout:
            raise UserError(
                f"cannot reach the DICOMweb server at {self.url}: no answer within "
                f"{_connect_timeout(self.timeout)} s"
            ) from None
        except requests.ConnectionError as exc:
            raise UserError(
                f"cannot reach the DICOMweb server at {self.url}: {_connection_reason(exc)}"
            ) from None
        except requests.Timeout:
            raise UserError(
                f"the DICOMweb server at {self.url} did not answer {what} within "
                f"{_read_timeout(self.timeout)} s"
            ) from None
        except (ValueError, InvalidDicomError, KeyError) as exc:
            raise UserError(
                f"the DICOMweb server at {self.url} sent an answer to {what} that is not "
                f"valid DICOMweb: {_short(exc)}"
            ) from None

    def _http_message(self, response: requests.Response | None, what: str) -> str:
        code = response.status_code if response is not None else 0
        reason = (response.reason or "") if response is not None else ""
        where = f"the DICOMweb server at {self.url}"
        if code == 401:
            given = "refused the credentials given" if self._credentials else "needs credentials"
            return f"{where} {given} (HTTP 401 to {what}); check the token or user:password"
        if code == 403:
            return f"{where} forbids {what} to these credentials (HTTP 403)"
        if code == 404:
            return (
                f"{where} answered 404 Not Found to {what}; check the base URL (the DICOMweb "
                "root, e.g. http://host:8042/dicom-web for Orthanc)"
            )
        return f"{where} answered HTTP {code} {reason} to {what}".rstrip()


def connect(
    url: str,
    *,
    credentials: Credentials | None = None,
    timeout: float | tuple[float, float] = DEFAULT_TIMEOUT,
    limits: Limits | None = None,
    ca_bundle: str | os.PathLike | None = None,
) -> DicomwebServer:
    """A :class:`DicomwebServer` for the DICOMweb root ``url`` (e.g.
    ``https://pacs.example.org/dicom-web``), checked with one small QIDO-RS search.

    ``timeout`` is seconds, or (connect, read) seconds. Unreachable, not DICOMweb, or
    credentials refused: a UserError line. Use it as a context manager to close it.
    """
    server = DicomwebServer(url, credentials, timeout, limits, ca_bundle)
    try:
        server.check()
    except BaseException:
        server.close()
        raise
    return server


# --- a study in a private folder ---------------------------------------------------------


@contextmanager
def fetched_study(
    server: DicomwebServer,
    study_uid: str,
    modalities: Iterable[str] | str | None = RADIOGRAPH_MODALITIES,
    parent: str | os.PathLike | None = None,
) -> Iterator[RetrievedStudy]:
    """Fetch a study's instances of ``modalities`` into a new private folder (mode 0700,
    files 0600, named ``<SOP Instance UID>.dcm``), yield it, and remove it afterwards, also
    when the block fails. ``parent`` is where the folder is made (the system temp dir by
    default). Limits are checked before anything is written; a refusal is a UserError.
    """
    info = server.study(study_uid)
    chosen, skipped = server.select_instances(info.study_uid, modalities)
    folder = Path(tempfile.mkdtemp(prefix="pneumoscope-dicomweb-", dir=parent))
    try:
        folder.chmod(0o700)
        files = [_write_private(server.retrieve(inst), inst.sop_uid, folder) for inst in chosen]
        log.info("fetched %d instance(s), skipped %d", len(files), len(skipped))
        yield RetrievedStudy(info, folder, files, skipped)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _write_private(ds: Dataset, sop_uid: str, folder: Path) -> Path:
    """Write as ``<sop_uid>.dcm`` (the UID checked, so no name can leave the folder), 0600."""
    path = folder / f"{check_uid(sop_uid, 'SOP Instance UID')}.dcm"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        pydicom.dcmwrite(f, ds, enforce_file_format=True)
    return path


# --- small helpers ---------------------------------------------------------------------


def _check_url(url: str) -> str:
    text = str(url).strip().rstrip("/")
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UserError(f"not a DICOMweb URL: {text!r} (expected http(s)://host[:port]/path)")
    if parts.username or parts.password:
        raise UserError("put DICOMweb credentials in a file or the environment, not in the URL")
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def _from_json(item: dict) -> Dataset:
    return Dataset.from_json(item)


def _text(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    text = str(value).strip() if value is not None else ""
    return text or None


def _int(ds: Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _study_info(ds: Dataset) -> StudyInfo:
    modalities = ds.get("ModalitiesInStudy") or ()
    if isinstance(modalities, str):
        modalities = (modalities,)
    return StudyInfo(
        study_uid=check_uid(_text(ds, "StudyInstanceUID") or ""),
        study_date=_text(ds, "StudyDate"),
        modalities=tuple(str(m).strip() for m in modalities if str(m).strip()),
        n_series=_int(ds, "NumberOfStudyRelatedSeries"),
        n_instances=_int(ds, "NumberOfStudyRelatedInstances"),
        description=_text(ds, "StudyDescription"),
    )


def _instance_info(ds: Dataset, study_uid: str) -> InstanceInfo:
    return InstanceInfo(
        study_uid=study_uid,
        series_uid=check_uid(_text(ds, "SeriesInstanceUID") or "", "Series Instance UID"),
        sop_uid=check_uid(_text(ds, "SOPInstanceUID") or "", "SOP Instance UID"),
        sop_class_uid=_text(ds, "SOPClassUID"),
        modality=_text(ds, "Modality"),
        instance_number=_int(ds, "InstanceNumber"),
    )


def _ensure_file_meta(ds: Dataset) -> None:
    ds.ensure_file_meta()
    meta = ds.file_meta
    if "TransferSyntaxUID" not in meta:
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID


def _stow_answer(response: requests.Response | None) -> Dataset | None:
    """The STOW-RS status dataset carried by an error response (409: some or all refused),
    if there is one. Orthanc sends it without a Content-Type, so an absent one is tried."""
    if response is None or not response.content:
        return None
    if "json" not in response.headers.get("Content-Type", "json"):
        return None
    try:
        answer = Dataset.from_json(response.json())
    except (ValueError, TypeError, KeyError):
        return None
    return answer if "FailedSOPSequence" in answer else None


def _outcomes(datasets: Sequence[Dataset], answer: Dataset) -> list[StoreOutcome]:
    results: dict[str, StoreOutcome] = {}
    for item in answer.get("ReferencedSOPSequence", []):
        uid = str(item.get("ReferencedSOPInstanceUID", ""))
        warning = item.get("WarningReason")
        detail = f"warning 0x{int(warning):04X}" if warning is not None else ""
        results[uid] = StoreOutcome(uid, True, detail)
    for item in answer.get("FailedSOPSequence", []):
        uid = str(item.get("ReferencedSOPInstanceUID", ""))
        results[uid] = StoreOutcome(uid, False, _failure_text(item.get("FailureReason")))
    missing = "the server did not acknowledge this instance"
    return [
        results.get(str(ds.SOPInstanceUID), StoreOutcome(str(ds.SOPInstanceUID), False, missing))
        for ds in datasets
    ]


def _failure_text(code) -> str:
    if code is None:
        return "refused (no reason given)"
    code = int(code)
    name = (
        _STOW_FAILURES.get(code)
        or _STOW_FAILURES.get(code & 0xFF00)
        or _STOW_FAILURES.get(code & 0xF000, "refused")
    )
    return f"{name} (0x{code:04X})"


def _connection_reason(exc: BaseException) -> str:
    text = str(exc)
    if "Connection refused" in text:
        return "connection refused (is the server running, and the port right?)"
    if "NameResolution" in text or "Name or service not known" in text:
        return "host name not found"
    return _short(exc)


def _connect_timeout(timeout: float | tuple[float, float]) -> float:
    return timeout[0] if isinstance(timeout, tuple) else timeout


def _read_timeout(timeout: float | tuple[float, float]) -> float:
    return timeout[1] if isinstance(timeout, tuple) else timeout


def _mb(n: int) -> str:
    return f"{n / 2**20:g} MiB"


def _short(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
