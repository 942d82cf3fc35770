"""`create_app(settings)`: the FastAPI application behind `pneumoscope serve`.

Endpoints: GET /healthz, GET /readyz, GET /v1/model, POST /v1/predict,
POST /v1/predict/batch, and the web page at / (its files under /static). The API's own
documentation is at /docs and /openapi.json.

POST /v1/predict?format=dicom answers a DICOM upload with DICOM: an SR and a secondary
capture joining the upload's study (``pneumoscope.pacs``), as a DICOMweb-style
``multipart/related; type="application/dicom"`` body a PACS gateway can store as it is.
"""

from __future__ import annotations

import base64
import hashlib
import math
import re
import uuid
from contextlib import asynccontextmanager
from importlib import resources
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.middleware.trustedhost import TrustedHostMiddleware
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles

from pneumoscope.core import __version__
from pneumoscope.core.errors import ImageReadError
from pneumoscope.data.preprocess import sniff_image
from pneumoscope.pacs.common import SourceError
from pneumoscope.pacs.results import results_bytes
from pneumoscope.serving.decoders import read_dicom_upload
from pneumoscope.serving.engine import Engine, Outcome, Upload
from pneumoscope.serving.errors import ApiError, error_response, install_handlers, request_id
from pneumoscope.serving.middleware import ErrorBoundary, RequestContext
from pneumoscope.serving.service import Service
from pneumoscope.serving.settings import ServeSettings

HEATMAP_HELP = "Also return the preprocessed input and its Grad-CAM heatmap as base64 PNGs."
DICOM_TYPE = "application/dicom"
MULTIPART_DICOM = f'multipart/related; type="{DICOM_TYPE}"'
FORMAT_HELP = (
    "json (default): the result as JSON. dicom (DICOM uploads only): two DICOM objects that "
    "join the upload's study, answered as " + MULTIPART_DICOM + " (as DICOMweb WADO-RS "
    "returns instances; store them with STOW-RS or C-STORE): first a Comprehensive SR "
    "(TID 1500 measurement report: pneumonia present/absent at the threshold, probability, "
    "threshold and policy, OOD flag and score, model id, reference to the image), then a "
    "Secondary Capture (the film with the Grad-CAM overlay and the result burned in). "
    "Both are AI results for research use, not for diagnosis. Another image type gets 422."
)
PREDICT_HELP = (
    "One image in the body (raw, or multipart field 'file'). The answer is JSON, or with "
    "format=dicom and a DICOM upload, " + MULTIPART_DICOM + " with an SR and a secondary "
    "capture for the PACS."
)
NOT_DICOM = (
    "format=dicom needs a DICOM upload: results join the image's DICOM study, and this "
    "image has none (send it without format=dicom for a JSON result)"
)
_ONE_FILE = {"type": "string", "format": "binary"}
_SINGLE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/octet-stream": {"schema": _ONE_FILE},
            "multipart/form-data": {
                "schema": {"type": "object", "properties": {"file": _ONE_FILE}}
            },
        },
    }
}
_BATCH_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"files": {"type": "array", "items": _ONE_FILE}},
                }
            }
        },
    }
}


def service(request: Request) -> Service:
    return request.app.state.service


def json_safe(value: Any) -> Any:
    """NaN and infinities (metrics a run could not compute) become null: strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def result_json(outcome: Outcome, rid: str, policy: str) -> dict:
    """One upload's answer: the predict CSV's fields, typed, plus its id and hash."""
    p = outcome.prediction
    return {
        "request_id": rid,
        "filename": p.path,
        "sha256": outcome.sha256,
        "probability": p.probability,
        "label": p.label or None,
        "threshold": p.threshold,
        "threshold_policy": policy,
        "model_id": p.model_id,
        "ood": p.ood,
        "ood_score": p.ood_score,
        "status": p.status,
        "error": p.error,
        "note": p.note,
        "estimated_age_group": p.estimated_age_group or None,
        "adult_probability": p.adult_probability,
        **outcome.pictures,
    }


def refusal_response(request: Request, outcome: Outcome) -> JSONResponse:
    """A single upload that was not analysed: the error; for a film the intended-use rules
    refuse, its outcome (skipped, out_of_scope) and, once decoded, the population check's
    estimate."""
    p = outcome.prediction
    if p.status == "error":
        return error_response(request, outcome.http_status, p.error)
    extra = {"outcome": p.status}
    if p.estimated_age_group:
        extra |= {"estimated_age_group": p.estimated_age_group}
        extra |= {"adult_probability": p.adult_probability}
    return error_response(request, outcome.http_status, p.error, extra=extra)


_bearer = HTTPBearer(
    auto_error=False,
    description="Only when the server was started with --token-file: "
    "'Authorization: Bearer <token>'.",
)


def require_token(
    request: Request, _: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    """The bearer check of every /v1 endpoint (declared so /docs offers 'Authorize')."""
    service(request).check_token(request)


class DicomWork:
    """format=dicom, on the worker thread: refuse an image that is not DICOM (422), predict
    with Grad-CAM, then build the SR and the capture from the upload and its result, in
    the decoder's worker processes like every other reading of upload bytes."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.parts: list[bytes] = []

    def __call__(self, uploads: list[Upload], deadline: float, decoder) -> list[Outcome]:
        data = uploads[0].data
        if sniff_image(data[:132]) not in (None, "dicom"):  # by magic bytes only
            raise ApiError(422, NOT_DICOM)
        [outcome] = self.engine.predict(uploads, True, deadline, decoder)
        if outcome.http_status == 200:
            heat = outcome.heat
            policy = self.engine.loaded.threshold_policy
            try:
                source, film = decoder.call(read_dicom_upload, data, deadline=deadline)
                parts = results_bytes(source, film, outcome.prediction, heat, policy)
            except (SourceError, ImageReadError) as exc:
                raise ApiError(422, f"cannot make DICOM results: {exc}") from None
            self.parts = list(parts)
        return [outcome]


def multipart_related(parts: list[bytes], media_type: str = DICOM_TYPE) -> Response:
    """A DICOMweb-style multipart/related body, one part per object, in order."""
    boundary = uuid.uuid4().hex
    head = f"--{boundary}\r\nContent-Type: {media_type}\r\n\r\n".encode()
    body = b"".join(head + part + b"\r\n" for part in parts) + f"--{boundary}--\r\n".encode()
    return Response(body, media_type=f'multipart/related; type="{media_type}"; boundary={boundary}')


async def _predict_dicom(request: Request, svc: Service) -> Response:
    work = DicomWork(svc.require_engine())
    [outcome] = await svc.predict(request, True, batch=False, work=work)
    if outcome.http_status != 200:
        return refusal_response(request, outcome)
    return multipart_related(work.parts)


def _v1_router() -> APIRouter:
    router = APIRouter(prefix="/v1", dependencies=[Depends(require_token)])

    @router.get("/model", summary="The model card, threshold, calibration and OOD guard")
    def model_info(request: Request) -> JSONResponse:
        return JSONResponse(json_safe(service(request).require_engine().info()))

    @router.post(
        "/predict",
        summary="Predict one image (JSON, or DICOM SR + secondary capture with format=dicom)",
        description=PREDICT_HELP,
        openapi_extra=_SINGLE_BODY,
        responses={200: {"content": {"application/json": {}, MULTIPART_DICOM: {}}}},
    )
    async def predict(
        request: Request,
        heatmap: bool = Query(False, description=HEATMAP_HELP),
        fmt: Literal["json", "dicom"] = Query("json", alias="format", description=FORMAT_HELP),
    ):
        svc = service(request)
        if fmt == "dicom":
            return await _predict_dicom(request, svc)
        [outcome] = await svc.predict(request, heatmap, batch=False)
        if outcome.http_status != 200:
            return refusal_response(request, outcome)
        policy = svc.require_engine().loaded.threshold_policy
        return JSONResponse(json_safe(result_json(outcome, request_id(request), policy)))

    @router.post("/predict/batch", summary="Predict several images", openapi_extra=_BATCH_BODY)
    async def predict_batch(
        request: Request, heatmap: bool = Query(False, description=HEATMAP_HELP)
    ):
        svc = service(request)
        outcomes = await svc.predict(request, heatmap, batch=True)
        policy = svc.require_engine().loaded.threshold_policy
        rid = request_id(request)
        return JSONResponse(json_safe({"results": [result_json(o, rid, policy) for o in outcomes]}))

    return router


def _health_routes(app: FastAPI) -> None:
    @app.get("/healthz", summary="The process is up")
    async def healthz() -> dict:  # on the event loop: answers while every thread is busy
        return {"status": "ok"}

    @app.get("/readyz", summary="The model is loaded")
    async def readyz(request: Request):
        svc = service(request)
        if svc.engine is None:
            if svc.load_error:
                raise ApiError(503, svc.load_error)
            return JSONResponse({"status": "loading"}, status_code=503)
        return {"status": "ready", "model_id": svc.engine.model_id}


def page_csp(html: str) -> str:
    """The page's Content-Security-Policy: only its own inline script and style (by their
    SHA-256), its own origin for the API, images from data and blob URLs, no framing."""

    def hashes(tag: str) -> str:
        blocks = re.findall(rf"<{tag}[^>]*>(.*?)</{tag}>", html, flags=re.S)
        digests = (base64.b64encode(hashlib.sha256(b.encode()).digest()).decode() for b in blocks)
        return " ".join(f"'sha256-{d}'" for d in digests)

    none = "'none'"
    return (
        f"default-src 'none'; script-src {hashes('script') or none}; "
        f"style-src {hashes('style') or none}; "
        "img-src 'self' data: blob:; connect-src 'self'; frame-ancestors 'none'; "
        "base-uri 'none'; form-action 'none'"
    )


def _page_routes(app: FastAPI) -> None:
    static = resources.files("pneumoscope.serving").joinpath("static")

    @app.get("/", include_in_schema=False)
    def index() -> HTMLResponse:
        page = static.joinpath("index.html")
        if not page.is_file():
            raise ApiError(404, "the web page is not installed; the API is at /docs")
        html = page.read_text(encoding="utf-8")
        return HTMLResponse(html, headers={"Content-Security-Policy": page_csp(html)})

    if static.is_dir():
        app.mount("/static", StaticFiles(directory=str(static), check_dir=False), name="static")


def _docs_routes(app: FastAPI) -> None:
    """Swagger UI from the package (swagger-ui-bundle), never from a CDN."""
    from swagger_ui_bundle import swagger_ui_path

    app.mount("/docs/assets", StaticFiles(directory=str(swagger_ui_path)), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        page = get_swagger_ui_html(
            openapi_url="openapi.json",
            title="pneumoscope API",
            swagger_js_url="docs/assets/swagger-ui-bundle.js",
            swagger_css_url="docs/assets/swagger-ui.css",
            swagger_favicon_url="docs/assets/favicon-32x32.png",
        )
        html = page.body.decode()
        csp = page_csp(html).replace("script-src ", "script-src 'self' ", 1)
        csp = csp.replace("style-src ", "style-src 'self' ", 1)
        return HTMLResponse(html, headers={"Content-Security-Policy": csp})


def create_app(settings: ServeSettings, engine: Engine | None = None) -> FastAPI:
    """The service for ``settings``; the run is loaded at start-up unless ``engine`` is
    given (the CLI loads it first, to fail with one line; tests inject one)."""
    svc = Service(settings, engine)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        svc.load_in_background()
        try:
            yield
        finally:
            svc.close()

    app = FastAPI(
        title="pneumoscope",
        version=__version__,
        summary="Pneumonia on chest X-rays: research use, not a medical device.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.service = svc
    install_handlers(app)
    _health_routes(app)
    app.include_router(_v1_router())
    _page_routes(app)
    _docs_routes(app)
    _middleware(app, settings, svc)
    return app


def _middleware(app: FastAPI, settings: ServeSettings, svc: Service) -> None:
    """Innermost first: the error boundary, CORS (when asked), the Host check, then the
    request context (id, security headers, access line) around everything."""
    app.add_middleware(ErrorBoundary, on_error=svc.audit_error)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=settings.host_names)
    app.add_middleware(RequestContext)
