"""DICOMweb: a PACS as the archive. QIDO-RS finds the instances, WADO-RS retrieves them, STOW-RS
stores results back. The only HTTP client of dcx.

- **Selection** (:class:`Query`): studies by StudyDate range (``--study-date``, ``--since``, or
  automatically since the last completed run of this state database), then series by Modality
  (CR and DX by default). Studies are paged (``limit``/``offset``), series and instances are
  listed per study, so memory holds one study's listing, not the archive. Order is stable:
  studies as the server pages them, series and instances by number, then UID.
- **Rows**: one per instance of a selected series; its path is the instance's WADO-RS URL.
  The state database keys such a URL by its SOP Instance UID alone
  (:func:`dcx.engine.state.state_key`), so a renamed or moved server keeps its history and a
  second night scores only new instances.
- **Retrieval**: a few concurrent requests per batch, each streamed to a temporary file
  (at most :data:`~dcx.core.formats.MAX_FILE_BYTES` each), decoded by the same
  :class:`~dcx.engine.decode.Decoder` and DICOM rules as files, deleted after the batch.
  Non-images (SR, presentation states, dcx's own reports) thus become ``skipped`` rows.
- **Failures**: timeouts, dropped connections, 429 and 5xx are retried with exponential
  backoff; when the retries run out the run stops with one ``Error:`` line (rows already
  committed stay in the state database: rerun to resume). A 404 for one instance (deleted since
  the query) is an ``error`` row for that instance. 401/403 stop the run naming where
  credentials come from.
- **Credentials** never travel on the command line: ``DCX_DICOMWEB_TOKEN`` (a bearer token),
  or ``DCX_DICOMWEB_USER`` + ``DCX_DICOMWEB_PASSWORD`` (HTTP basic), else the netrc file
  (``~/.netrc`` or ``$NETRC``). A URL with ``user:password@`` is refused. TLS is verified;
  ``--ca-bundle`` names a site CA file.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator
from urllib.parse import quote, urlsplit

from dcx.core.errors import DcxError
from dcx.core.formats import MAX_FILE_BYTES

from .discover import Candidate

ENV_TOKEN, ENV_USER, ENV_PASSWORD = "DCX_DICOMWEB_TOKEN", "DCX_DICOMWEB_USER", "DCX_DICOMWEB_PASSWORD"
#: Concurrent WADO-RS / STOW-RS requests (a PACS serves a few well; many hurt its other users).
WORKERS = 4
#: Studies per QIDO-RS page.
PAGE = 500
#: Hard bound on pages, so a server that ignores ``offset`` cannot loop the run forever.
MAX_PAGES = 100_000
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_CHUNK = 1 << 20
_ACCEPT_DICOM = 'multipart/related; type="application/dicom"; transfer-syntax=*'
#: What a lower date bound of "since the last run" subtracts: StudyDate is a local calendar date,
#: and studies arrive in the PACS after they are acquired.
SINCE_MARGIN = timedelta(days=1)
LAST_RUN_KEY = "dicomweb_last_completed_run"


def is_dicomweb_url(text: str) -> bool:
    return str(text).lower().startswith(("http://", "https://"))


# --------------------------------------------------------------------------- HTTP


class DicomWebClient:
    """QIDO-RS, WADO-RS and STOW-RS against one base URL (``http://host:8042/dicom-web``),
    with retries, credentials from the environment or netrc, and verified TLS."""

    def __init__(self, base_url: str, *, ca_bundle: str | os.PathLike | None = None, timeout: float = 60.0,
                 retries: int = 4, backoff: float = 1.0):
        import requests

        parts = urlsplit(str(base_url))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise DcxError(f"not a DICOMweb URL: {_safe(base_url)!r} (want http[s]://host[:port]/path)")
        if parts.username or parts.password:
            raise DcxError(f"credentials in the URL are refused (they would show in logs and process lists); "
                           f"set {ENV_TOKEN}, or {ENV_USER} and {ENV_PASSWORD}, or use a netrc file")
        try:
            parts.port
        except ValueError:
            raise DcxError(f"bad port in DICOMweb URL {_safe(base_url)!r}") from None
        if ca_bundle is not None and not Path(ca_bundle).is_file():
            raise DcxError(f"--ca-bundle {ca_bundle} is not a file")
        self.base = str(base_url).rstrip("/")
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_connections=2, pool_maxsize=WORKERS * 2)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.verify = str(ca_bundle) if ca_bundle else True
        token, user = os.environ.get(ENV_TOKEN), os.environ.get(ENV_USER)
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"
        elif user:
            self.session.auth = (user, os.environ.get(ENV_PASSWORD, ""))
        # else: requests reads ~/.netrc (or $NETRC) for the host by itself

    def url(self, *segments: str) -> str:
        return "/".join([self.base, *(quote(s, safe="") for s in segments)])

    def search(self, *segments: str, params: dict | None = None) -> list[dict]:
        """A QIDO-RS query: the DICOM JSON objects it matched (204 / empty body: none)."""
        response = self.request("GET", self.url(*segments), params=params,
                                headers={"Accept": "application/dicom+json"})
        if response.status_code == 204 or not response.content:
            return []
        try:
            found = response.json()
        except ValueError:
            raise DcxError(f"{_safe(response.url)} did not answer DICOM JSON: is this a DICOMweb root?") from None
        if not isinstance(found, list):
            raise DcxError(f"{_safe(response.url)} answered JSON that is not a list of DICOM objects")
        return [item for item in found if isinstance(item, dict)]

    def retrieve(self, instance_url: str, dest: Path, max_bytes: int) -> int:
        """WADO-RS: store the instance at ``instance_url`` as a DICOM file ``dest`` (its size).

        The multipart answer is streamed to disk and its one part cut out in place: memory
        holds a megabyte at a time whatever the image size. A body cut off midway (a PACS
        restarting) is fetched again, as :meth:`request` retries. Raises :class:`InstanceError`
        for a problem of this instance alone, :class:`DcxError` when the server fails."""
        import requests

        for attempt in range(self.retries + 1):
            try:
                with self.request("GET", instance_url, headers={"Accept": _ACCEPT_DICOM}, stream=True,
                                  allow_status=(404, 406, 410)) as response:
                    if response.status_code != 200:
                        raise InstanceError(f"WADO-RS answered {response.status_code} {response.reason} "
                                            "for this instance")
                    boundary = _boundary(response.headers.get("Content-Type", ""))
                    return _stream_part(response, dest, boundary, max_bytes)
            except (requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError,
                    requests.exceptions.Timeout) as exc:
                problem = _short(exc)
            if attempt < self.retries:
                time.sleep(min(self.backoff * 2 ** attempt, 30.0))
        raise self._gave_up(instance_url, problem)

    def metadata(self, instance_url: str) -> dict:
        """WADO-RS metadata of one instance: its DICOM JSON object (bulk data left out)."""
        response = self.request("GET", instance_url + "/metadata", headers={"Accept": "application/dicom+json"},
                                allow_status=(404, 410))
        if response.status_code != 200:
            raise InstanceError(f"metadata: {response.status_code} {response.reason}")
        try:
            found = response.json()
        except ValueError:
            raise InstanceError("metadata is not DICOM JSON") from None
        if not isinstance(found, list) or not found or not isinstance(found[0], dict):
            raise InstanceError("metadata is not a DICOM JSON object")
        return found[0]

    def store(self, dicom_bytes: bytes) -> None:
        """STOW-RS one DICOM object (a Part 10 file's bytes); raises unless the server kept it."""
        boundary = uuid.uuid4().hex
        body = b"".join([f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode(), dicom_bytes,
                         f"\r\n--{boundary}--\r\n".encode()])
        response = self.request(
            "POST", self.url("studies"), data=body, allow_status=(400, 409, 415),
            headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                     "Accept": "application/dicom+json"})
        if response.status_code not in (200, 202):
            raise InstanceError(f"STOW-RS answered {response.status_code} {response.reason}")
        try:
            answer = response.json() if response.content else {}
        except ValueError:
            answer = {}
        failed = answer.get("00081198", {}).get("Value") if isinstance(answer, dict) else None
        if failed:
            reason = failed[0].get("00081197", {}).get("Value", ["?"])[0] if isinstance(failed[0], dict) else "?"
            raise InstanceError(f"STOW-RS refused the report (failure reason {reason})")

    def request(self, method: str, url: str, *, allow_status: tuple[int, ...] = (), **kwargs):
        """One HTTP request, retried with exponential backoff on timeouts, dropped connections,
        408/429/5xx. 401/403 and other unexpected statuses raise :class:`DcxError` at once."""
        import requests

        for attempt in range(self.retries + 1):
            problem = None
            try:
                response = self.session.request(method, url, timeout=self.timeout, **kwargs)
            except requests.exceptions.SSLError as exc:
                raise DcxError(f"TLS verification failed for {_host(url)} ({_short(exc)}); "
                               "pass the site CA with --ca-bundle FILE") from None
            except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
                    requests.exceptions.InvalidSchema) as exc:
                raise DcxError(f"bad DICOMweb URL {_safe(url)!r}: {_short(exc)}") from None
            except (requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError,
                    requests.exceptions.Timeout) as exc:  # ChunkedEncodingError: a body cut off midway
                problem = _short(exc)
            else:
                status = response.status_code
                if status < 300 or status in allow_status:
                    return response
                response.close()
                if status in (401, 403):
                    raise DcxError(
                        f"{_host(url)} refused access ({status} {response.reason}): set {ENV_TOKEN}, or "
                        f"{ENV_USER} and {ENV_PASSWORD}, or a netrc entry for the host")
                if status not in _RETRY_STATUS:
                    raise DcxError(f"{method} {_safe(url)} answered {status} {response.reason}"
                                   + ("; is this the DICOMweb root?" if status == 404 else ""))
                problem = f"{status} {response.reason}"
            if attempt < self.retries:
                time.sleep(min(self.backoff * 2 ** attempt, 30.0))
        raise self._gave_up(url, problem)

    def _gave_up(self, url: str, problem: str) -> DcxError:
        return DcxError(f"DICOMweb server {_host(url)} failed {self.retries + 1} times ({problem}); "
                        "finished rows are kept: rerun the same command to resume")

    def close(self) -> None:
        self.session.close()


class InstanceError(Exception):
    """A problem of one instance (gone, refused, malformed answer): its row says so, the run goes on."""


def _boundary(content_type: str) -> str | None:
    """The multipart boundary, or None when the server answered a bare application/dicom body."""
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind == "application/dicom":
        return None
    if kind != "multipart/related":
        raise InstanceError(f"WADO-RS answered {content_type[:80]!r}, not multipart/related DICOM")
    match = re.search(r'boundary="?([^";]+)"?', content_type, re.IGNORECASE)
    if not match:
        raise InstanceError("WADO-RS multipart answer without a boundary")
    return match.group(1)


def _stream_part(response, dest: Path, boundary: str | None, max_bytes: int) -> int:
    """Write the first part of a multipart body (or the bare body) to ``dest``; its size."""
    header_end = None
    head = b""
    written = 0
    with open(dest, "wb") as out:
        for block in response.iter_content(_CHUNK):
            if header_end is None and boundary is not None:
                head += block
                header_end = head.find(b"\r\n\r\n")
                if header_end < 0:
                    header_end = None
                    if len(head) > 64 * 1024:
                        raise InstanceError("WADO-RS part headers longer than 64 KiB")
                    continue
                block, head = head[header_end + 4:], b""
            written += len(block)
            if written > max_bytes + 1024:
                raise InstanceError(f"instance exceeds the {max_bytes} byte limit")
            out.write(block)
        if boundary is not None:
            if header_end is None:
                raise InstanceError("WADO-RS multipart answer ended inside the part headers")
            written = _cut_at_boundary(out, dest, boundary, written)
    if written == 0:
        raise InstanceError("WADO-RS answered an empty instance")
    return written


def _cut_at_boundary(out, dest: Path, boundary: str, size: int) -> int:
    """Truncate ``dest`` before the boundary that closes the first part."""
    out.flush()
    tail_len = min(size, 4096)
    with open(dest, "rb") as f:
        f.seek(size - tail_len)
        tail = f.read()
    marker = tail.rfind(b"\r\n--" + boundary.encode("latin-1"))
    if marker < 0:
        raise InstanceError("WADO-RS multipart answer without its closing boundary (truncated?)")
    end = size - tail_len + marker
    out.truncate(end)
    return end


def _host(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")


def _safe(url) -> str:
    """A URL without any user:password part, for messages."""
    parts = urlsplit(str(url))
    if "@" in parts.netloc:
        return parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]).geturl()
    return str(url)


def _short(exc: Exception) -> str:
    text = str(exc)
    if "Max retries exceeded" in text or "NewConnectionError" in text:
        return "connection refused or host unreachable"
    if "timed out" in text.lower():
        return "timed out"
    return text[:200]


# --------------------------------------------------------------------------- selection


@dataclass(frozen=True)
class Query:
    """Which studies and series to screen. ``since``: a date, ``"last-run"`` (the start of the
    last completed run of this state database, less :data:`SINCE_MARGIN`), or None."""

    study_dates: tuple[date | None, date | None] = (None, None)
    modalities: frozenset[str] = frozenset({"CR", "DX"})
    since: date | str | None = None

    @classmethod
    def from_options(cls, modality: str, study_date: str | None, since: str | None) -> "Query":
        """The query of dcx-infer's ``--modality``, ``--study-date`` and ``--since``."""
        return cls(study_dates=parse_date_range(study_date) if study_date else (None, None),
                   modalities=frozenset() if modality.strip().lower() == "any"
                   else frozenset(m.strip().upper() for m in modality.split(",") if m.strip()),
                   since=parse_since(since) if since else None)

    def date_filter(self, last_run: datetime | None) -> str | None:
        """The QIDO-RS StudyDate range (``20240101-``, ``20240101-20240131``) or None."""
        low, high = self.study_dates
        since = self.since
        if since == "last-run":
            since = (last_run - SINCE_MARGIN).date() if last_run is not None else None
        if since is not None and (low is None or since > low):
            low = since
        if low is None and high is None:
            return None
        text = [f"{d:%Y%m%d}" if d else "" for d in (low, high)]
        return text[0] if low == high else "-".join(text)

    def wants_series(self, modality: str) -> bool:
        return not self.modalities or modality.strip().upper() in self.modalities


def parse_date_range(text: str) -> tuple[date | None, date | None]:
    """``2024-01-01..2024-01-31``, ``20240101-20240131``, ``2024-01-01..`` or one date."""
    text = text.strip()
    if ".." in text:
        low, high = text.split("..", 1)
    elif re.fullmatch(r"\d{8}-\d{8}|\d{8}-|-\d{8}", text):
        low, high = text.split("-", 1)
    else:
        low = high = text
    try:
        bounds = tuple(_parse_date(v) if v.strip() else None for v in (low, high))
    except ValueError:
        raise DcxError(f"--study-date wants YYYY-MM-DD..YYYY-MM-DD (either side may be empty), got {text!r}") from None
    if bounds[0] and bounds[1] and bounds[0] > bounds[1]:
        raise DcxError(f"--study-date {text!r} ends before it starts")
    return bounds


def parse_since(text: str) -> date | str:
    if text.strip().lower() in ("last-run", "last"):
        return "last-run"
    try:
        return _parse_date(text)
    except ValueError:
        raise DcxError(f"--since wants a date (YYYY-MM-DD) or 'last-run', got {text!r}") from None


def _parse_date(text: str) -> date:
    text = text.strip()
    return datetime.strptime(text, "%Y%m%d" if text.isdigit() else "%Y-%m-%d").date()


def _value(item: dict, tag: str) -> str:
    """First value of a tag in a DICOM JSON object, as text ('' when absent or odd)."""
    element = item.get(tag)
    values = element.get("Value") if isinstance(element, dict) else None
    if not isinstance(values, list) or not values:
        return ""
    first = values[0]
    if isinstance(first, dict):  # person names
        first = first.get("Alphabetic", "")
    return str(first).strip()


def _number(item: dict, tag: str) -> int:
    try:
        return int(float(_value(item, tag)))
    except (ValueError, OverflowError):
        return 1 << 31


def _unique(items: list[dict], uid_tag: str, number_tag: str) -> list[str]:
    """The distinct UIDs of QIDO-RS answers, ordered by number then UID. A server may list one
    UID more than once (Orthanc does when two patients' files carry the same UIDs); it gets
    one row (the state database keys instances by SOP Instance UID)."""
    first: dict[str, int] = {}
    for item in items:
        uid = _value(item, uid_tag)
        if uid:
            first.setdefault(uid, _number(item, number_tag))
    return sorted(first, key=lambda uid: (first[uid], uid))


class DicomWebSource:
    """A DICOMweb server as a stream of :class:`Candidate` rows and a decoder feed."""

    def __init__(self, client: DicomWebClient, query: Query = Query()):
        self.client = client
        self.query = query

    @property
    def base(self) -> str:
        return self.client.base

    def last_run(self, state) -> datetime | None:
        """When the last completed run of this server, model and state database started."""
        value = state.get_meta(self._run_key(state))
        try:
            return datetime.fromisoformat(value) if value else None
        except ValueError:
            return None  # an unreadable stamp: screen everything (the state still skips done rows)

    def mark_completed(self, state, started: float) -> None:
        state.set_meta(self._run_key(state), datetime.fromtimestamp(started, tz=timezone.utc).isoformat())

    def _run_key(self, state) -> str:
        return f"{LAST_RUN_KEY}:{state.model_id}:{self.base}"

    def candidates(self, shard=None, last_run: datetime | None = None) -> Iterator[Candidate]:
        """One candidate per instance of the selected series, studies of ``shard`` only (a
        study's shard is a hash of its Study Instance UID, so a study is never split)."""
        for study in self._studies(last_run):
            if shard is not None and not shard.owns(study):
                continue
            if not _UID.match(study) or len(study) > 64:
                yield Candidate(self.client.url("studies", study), error="invalid Study Instance UID from QIDO-RS")
                continue
            series = [s for s in self.client.search("studies", study, "series")
                      if self.query.wants_series(_value(s, "00080060"))]
            for uid in _unique(series, "0020000E", "00200011"):
                yield from self._instances(study, uid)

    def _studies(self, last_run: datetime | None) -> Iterator[str]:
        params = {"limit": PAGE, "includefield": "0020000D"}
        dates = self.query.date_filter(last_run)
        if dates:
            params["StudyDate"] = dates
        seen: set[str] = set()
        for page in range(MAX_PAGES):
            found = self.client.search("studies", params={**params, "offset": page * PAGE})
            fresh = sorted({_value(s, "0020000D") for s in found} - seen - {""})
            seen.update(fresh)
            yield from fresh
            if len(found) < PAGE or not fresh:
                return

    def _instances(self, study: str, series: str) -> Iterator[Candidate]:
        if not _UID.match(series) or len(series) > 64:
            yield Candidate(self.client.url("studies", study, "series", series),
                            error="invalid Series Instance UID from QIDO-RS")
            return
        found = self.client.search("studies", study, "series", series, "instances")
        for sop in _unique(found, "00080018", "00200013"):
            url = self.client.url("studies", study, "series", series, "instances", sop)
            bad = not _UID.match(sop) or len(sop) > 64
            yield Candidate(url, error="invalid SOP Instance UID from QIDO-RS" if bad else None)

    def decode(self, decoder, urls: list[str]):
        """Retrieve ``urls`` (a few at a time) into a temporary folder and decode them with
        ``decoder``: the same rules as files. Instances that could not be retrieved keep the
        reason in their outcome; the folder is gone on return."""
        with tempfile.TemporaryDirectory(prefix="dcx-dicomweb-") as folder:
            paths = [Path(folder) / f"{k}.dcm" for k in range(len(urls))]
            problems: dict[int, str] = {}

            def fetch(k: int) -> None:
                try:
                    self.client.retrieve(urls[k], paths[k], MAX_FILE_BYTES)
                except InstanceError as exc:
                    problems[k] = str(exc)
                    paths[k].unlink(missing_ok=True)

            run_all(fetch, range(len(urls)))
            batch = decoder.decode(paths)
        for k, reason in problems.items():
            batch.outcomes[k].status, batch.outcomes[k].reason = "error", reason
        for url, outcome in zip(urls, batch.outcomes):  # rows the decoder could not read still name them
            for key, uid in zip(("study_uid", "series_uid", "sop_uid"), url.split("/")[-5::2]):
                if not outcome.meta.get(key):
                    outcome.meta[key] = uid
        return batch

    def header(self, url: str):
        """The instance's attributes without pixel data, as a pydicom Dataset (for reports)."""
        from pydicom.dataset import Dataset

        meta = self.client.metadata(url)
        meta = {tag: element for tag, element in meta.items()
                if isinstance(element, dict) and "BulkDataURI" not in element}
        return Dataset.from_json(json.dumps(meta))


def run_all(function, items) -> None:
    """``function`` over ``items`` on :data:`WORKERS` threads; the first exception is raised."""
    items = list(items)
    if len(items) <= 1:
        for item in items:
            function(item)
        return
    with ThreadPoolExecutor(max_workers=min(WORKERS, len(items)), thread_name_prefix="dcx-http") as pool:
        for future in [pool.submit(function, item) for item in items]:
            future.result()
