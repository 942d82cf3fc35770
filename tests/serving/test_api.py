"""The HTTP API in-process: every endpoint, every error status, the awkward files."""

from __future__ import annotations

import base64
import csv
import json
import threading
import time

import cv2
import numpy as np
import pytest

from pneumoscope.inference.predict import predict_rows, predict_to_csv
from tests.helpers import dicom_dataset, dicom_ramp, png_header_only, write_dicom
from tests.serving.conftest import RUN_V1

ERROR_KEYS = {"status", "error", "request_id"}


def _is_error(r, status: int, words: str) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    # a film the intended-use rules refuse also says so: outcome skipped or out_of_scope
    refused = {"outcome"} if body.get("outcome") in ("skipped", "out_of_scope") else set()
    assert set(body) == ERROR_KEYS | refused and body["status"] == "error"
    assert words in body["error"]


def _png(image: np.ndarray) -> bytes:
    return cv2.imencode(".png", image)[1].tobytes()


def test_health_ready_and_model(client, engine):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready", "model_id": engine.model_id}
    info = client.get("/v1/model").json()
    assert info["model_id"] == engine.model_id
    assert info["card"]["architecture"] == engine.loaded.card.architecture
    assert info["threshold"] == engine.loaded.threshold
    assert "calibrated" in info["threshold_policy"]
    assert info["calibration"] is not None and info["ood"] is not None
    assert info["intended_use"] == engine.loaded.card.intended_use
    assert client.get("/openapi.json").json()["paths"].keys() >= {"/v1/predict", "/readyz"}


def test_real_film_gets_exactly_the_probability_predict_writes(client, films, tmp_path):
    out = tmp_path / "p.csv"
    predict_to_csv(RUN_V1, [str(f) for f in films], out, batch_size=1, workers=1)
    rows = list(csv.DictReader(out.open()))
    for film, row in zip(films, rows, strict=True):
        r = client.post("/v1/predict", content=film.read_bytes())
        body = r.json()
        assert r.status_code == 200 and body["status"] == "ok"
        assert f"{body['probability']:.6f}" == row["probability"]
        assert f"{body['ood_score']:.4f}" == row["ood_score"]
        assert body["label"] == row["label"] and body["model_id"] == row["model_id"]


def test_same_numbers_as_predict_rows_raw_and_multipart(client, engine, films):
    [expected] = predict_rows(engine.predictor, [str(films[0])], batch_size=1)
    raw = client.post("/v1/predict", content=films[0].read_bytes()).json()
    form = client.post("/v1/predict", files={"file": ("x.jpeg", films[0].read_bytes())}).json()
    assert raw["probability"] == expected.probability == form["probability"]
    assert raw["ood_score"] == expected.ood_score
    assert form["filename"] == "x.jpeg" and raw["filename"] == ""


def test_dicom_upload_equals_the_dicom_file(client, engine, tmp_path):
    path = write_dicom(dicom_dataset(dicom_ramp(0, 4000, np.uint16)), tmp_path / "a.dcm")
    [expected] = predict_rows(engine.predictor, [str(path)], batch_size=1)
    body = client.post("/v1/predict", content=path.read_bytes()).json()
    assert body["status"] == "ok" and body["probability"] == expected.probability


def test_heatmap_pictures(client, films):
    body = client.post("/v1/predict?heatmap=true", content=films[1].read_bytes()).json()
    image = cv2.imdecode(np.frombuffer(base64.b64decode(body["image_png"]), np.uint8), -1)
    heat = cv2.imdecode(np.frombuffer(base64.b64decode(body["heatmap_png"]), np.uint8), -1)
    assert image.ndim == 2 and image.dtype == np.uint8
    assert heat.shape == (*image.shape, 4)
    plain = client.post("/v1/predict", content=films[1].read_bytes()).json()
    assert "image_png" not in plain and plain["probability"] == body["probability"]


def test_batch_keeps_order_and_per_file_errors(client, films):
    files = [
        ("files", ("a.jpeg", films[0].read_bytes())),
        ("files", ("notes.txt", b"hello, not an image")),
        ("files", ("b.jpeg", films[2].read_bytes())),
    ]
    r = client.post("/v1/predict/batch?heatmap=true", files=files)
    results = r.json()["results"]
    assert r.status_code == 200 and [x["filename"] for x in results] == [
        "a.jpeg",
        "notes.txt",
        "b.jpeg",
    ]
    assert [x["status"] for x in results] == ["ok", "error", "ok"]
    assert results[1]["probability"] is None and "not an image" in results[1]["error"]
    assert "heatmap_png" in results[2] and "heatmap_png" not in results[1]
    single = client.post("/v1/predict", content=films[2].read_bytes()).json()
    # one forward pass of two images: float rounding may differ from a batch of one
    assert results[2]["probability"] == pytest.approx(single["probability"], abs=1e-6)


def _truncated_jpeg() -> bytes:
    data = cv2.imencode(".jpg", np.full((200, 200), 128, np.uint8))[1].tobytes()
    return data[:180]


def _dicom_without_pixels(tmp_path) -> bytes:
    return write_dicom(dicom_dataset(None), tmp_path / "nopix.dcm").read_bytes()


@pytest.mark.parametrize(
    ("make", "status", "words"),
    [
        (lambda _: b"", 400, "empty"),
        (lambda _: _truncated_jpeg(), 400, "not a readable image"),
        (lambda _: b"just some text, no pixels here\n" * 10, 415, "not an image"),
        (lambda _: png_header_only(60000, 60000), 400, "too large"),
        (_dicom_without_pixels, 422, "DICOM without pixel data"),  # skipped: no image
        (lambda _: b"%PDF-1.7\n" + bytes(300), 415, "not an image"),
    ],
)
def test_awkward_files_get_their_json_error_and_serving_goes_on(
    client, films, tmp_path, make, status, words
):
    _is_error(client.post("/v1/predict", content=make(tmp_path)), status, words)
    assert client.post("/v1/predict", content=films[0].read_bytes()).status_code == 200


def test_type_is_sniffed_not_taken_from_name_or_header(client, films):
    text = client.post(
        "/v1/predict",
        files={"file": ("film.png", b"hello", "image/png")},
        headers={},
    )
    _is_error(text, 415, "not an image")
    jpeg = client.post(
        "/v1/predict", content=films[0].read_bytes(), headers={"content-type": "text/plain"}
    )
    assert jpeg.status_code == 200


def test_bad_parameters_are_422(client, films):
    _is_error(client.post("/v1/predict?heatmap=maybe", content=b"x"), 422, "heatmap")
    no_file = client.post("/v1/predict", files={"other": ("a.jpeg", films[0].read_bytes())})
    _is_error(no_file, 422, "'file'")
    _is_error(client.post("/v1/predict/batch", content=films[0].read_bytes()), 422, "multipart")
    _is_error(client.get("/v1/nothing"), 404, "Not Found")


def test_invalid_multipart_is_400(client):
    r = client.post(
        "/v1/predict",
        content=b"garbage",
        headers={"content-type": "multipart/form-data"},  # no boundary
    )
    _is_error(r, 400, "multipart")


def test_token_guards_v1_but_not_health(make_client, tmp_path, films):
    token = tmp_path / "token"
    token.write_text("s3cret-token-of-16-plus\n")
    c = make_client(token_file=token)
    assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200
    _is_error(c.get("/v1/model"), 401, "bearer token")
    _is_error(c.get("/v1/model", headers={"Authorization": "Bearer wrong"}), 401, "bearer")
    _is_error(c.post("/v1/predict", content=films[0].read_bytes()), 401, "bearer")
    good = {"Authorization": "Bearer s3cret-token-of-16-plus"}
    assert c.get("/v1/model", headers=good).status_code == 200
    assert c.post("/v1/predict", content=films[0].read_bytes(), headers=good).status_code == 200


def test_cors_only_when_configured(make_client):
    pre = {"Origin": "https://viewer.example", "Access-Control-Request-Method": "POST"}
    off = make_client().options("/v1/predict", headers=pre)
    assert "access-control-allow-origin" not in off.headers
    on = make_client(cors_origins=("https://viewer.example",)).options("/v1/predict", headers=pre)
    assert on.headers["access-control-allow-origin"] == "https://viewer.example"


def test_busy_server_answers_503_and_recovers(make_client, films):
    c = make_client(runner_delay=1.5, max_concurrency=1, max_queue=0)
    data = films[0].read_bytes()
    first: dict = {}
    t = threading.Thread(target=lambda: first.update(r=c.post("/v1/predict", content=data)))
    t.start()
    svc = c.app.state.service
    deadline = time.monotonic() + 10
    while svc.admission.count == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    busy = c.post("/v1/predict", content=data)
    t.join()
    _is_error(busy, 503, "busy")
    assert busy.headers["retry-after"] == "1"
    assert first["r"].status_code == 200
    assert c.post("/v1/predict", content=data).status_code == 200


def test_time_limit_is_504_and_the_slot_comes_back(make_client, films):
    c = make_client(runner_delay=0.8, timeout_s=0.2, max_concurrency=1, max_queue=0)
    data = films[0].read_bytes()
    _is_error(c.post("/v1/predict", content=data), 504, "0.2 s limit")
    svc = c.app.state.service
    deadline = time.monotonic() + 10
    while svc.admission.count and time.monotonic() < deadline:
        time.sleep(0.05)  # the abandoned job still finishes, then frees its place
    assert svc.admission.count == 0


def test_audit_log_has_hashes_and_no_names(make_client, tmp_path, films):
    import hashlib

    log = tmp_path / "audit" / "audit.jsonl"
    c = make_client(audit_log=log)
    ds = dicom_dataset(dicom_ramp(0, 4000, np.uint16), PatientName="Doe^Jane")
    ds.PatientBirthDate = "19700101"
    dcm = write_dicom(ds, tmp_path / "Doe_Jane.dcm").read_bytes()
    c.post("/v1/predict", files={"file": ("Doe_Jane.dcm", dcm)})
    c.post("/v1/predict/batch", files=[("files", ("film_042.jpeg", films[0].read_bytes()))])
    c.post("/v1/predict", content=b"text")
    text = log.read_text()
    lines = [json.loads(x) for x in text.splitlines()]
    assert [x["status"] for x in lines] == ["ok", "ok", "error"]
    assert lines[0]["sha256"] == hashlib.sha256(dcm).hexdigest() and lines[0]["size"] == len(dcm)
    assert lines[2]["http_status"] == 415 and lines[2]["probability"] is None
    for key in ("time", "request_id", "client", "model_id", "label", "ood", "latency_ms"):
        assert key in lines[0]
    for secret in ("Doe", "Jane", "PAT-001", "19700101", "film_042", ".dcm", ".jpeg"):
        assert secret not in text


def test_readyz_is_503_until_loaded_then_ready(tmp_path):
    from fastapi.testclient import TestClient

    from pneumoscope.serving.app import create_app
    from pneumoscope.serving.settings import ServeSettings

    # lifespan not run: never loads
    cold = TestClient(create_app(ServeSettings(run=RUN_V1)), base_url="http://localhost")
    assert cold.get("/readyz").status_code == 503
    _is_error(cold.post("/v1/predict", content=b"x"), 503, "loading")
    with TestClient(
        create_app(ServeSettings(run=tmp_path / "missing")), base_url="http://localhost"
    ) as bad:
        deadline = time.monotonic() + 30
        while bad.app.state.service.load_error == "" and time.monotonic() < deadline:
            time.sleep(0.05)
        _is_error(bad.get("/readyz"), 503, "run folder not found")
        assert bad.get("/healthz").status_code == 200


def test_page_is_served_or_named_missing(client):
    r = client.get("/")
    if r.status_code == 200:
        assert "html" in r.headers["content-type"]
    else:
        _is_error(r, 404, "web page")


def test_response_headers(client):
    r = client.get("/healthz")
    assert len(r.headers["x-request-id"]) == 32
    assert r.headers["x-content-type-options"] == "nosniff"


def test_png_of_a_synthetic_image(client):
    img = np.tile(np.linspace(0, 255, 64, dtype=np.float32), (64, 1)).astype(np.uint8)
    body = client.post("/v1/predict", content=_png(img)).json()
    assert body["status"] == "ok" and 0.0 <= body["probability"] <= 1.0


def test_model_info_carries_the_run_evaluation_without_server_paths(tmp_path):
    import json
    import shutil

    from fastapi.testclient import TestClient

    from pneumoscope.serving.app import create_app
    from pneumoscope.serving.engine import Engine
    from pneumoscope.serving.settings import ServeSettings

    run = tmp_path / "run"
    shutil.copytree(RUN_V1, run)
    metrics = {
        "run": str(run),
        "data": "/secret/data",
        "split": "test",
        "n": 8,
        "auroc": 0.9,
        "ci": {"auroc": [0.8, 0.95]},
        "per_image": {"index": [1, 2]},
    }
    (run / "metrics.json").write_text(json.dumps(metrics))
    app = create_app(ServeSettings(run=run), Engine.load(run))
    with TestClient(app, base_url="http://localhost") as client:
        info = client.get("/v1/model").json()
    assert info["test_metrics"]["auroc"] == 0.9 and info["test_metrics"]["ci"]["auroc"] == [
        0.8,
        0.95,
    ]
    assert "run" not in info["test_metrics"] and "data" not in info["test_metrics"]
    assert "per_image" not in info["test_metrics"]


def test_openapi_declares_the_bearer_scheme_on_v1_only(client):
    """/docs offers 'Authorize' for the /v1 endpoints; health stays open."""
    spec = client.get("/openapi.json").json()
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert spec["paths"]["/v1/predict"]["post"]["security"] == [{"HTTPBearer": []}]
    assert "security" not in spec["paths"]["/healthz"]["get"]
