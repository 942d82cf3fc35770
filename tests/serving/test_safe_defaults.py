"""Safe defaults of the service: Host check, security headers, no-store, local API docs,
refusals that end the connection, a private audit log that records refusals and
failures, a log without request data, and the settings that refuse risky starts."""

from __future__ import annotations

import json
import logging
import stat

import pytest

from pneumoscope.core.errors import UserError
from pneumoscope.serving.settings import ServeSettings
from tests.serving.conftest import RUN_V1

TOKEN = "a-token-of-more-than-16-characters"


def test_a_foreign_host_header_is_refused_unless_allowed(make_client):
    c = make_client()
    assert c.get("/healthz").status_code == 200  # localhost, the test client's host
    assert c.get("/healthz", headers={"host": "rebind.attacker.example"}).status_code == 400
    named = make_client(allowed_hosts=("xray.hospital.example",))
    assert named.get("/healthz", headers={"host": "xray.hospital.example:8000"}).status_code == 200


def test_page_has_a_strict_content_security_policy(client):
    r = client.get("/")
    csp = r.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp and "'unsafe-inline'" not in csp
    assert "script-src 'sha256-" in csp and "default-src 'none'" in csp
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["referrer-policy"] == "no-referrer"


def test_api_answers_are_not_cached(client, films):
    for r in (client.get("/v1/model"), client.post("/v1/predict", content=films[0].read_bytes())):
        assert r.headers["cache-control"] == "no-store"
        assert "default-src 'none'" in r.headers["content-security-policy"]


def test_api_docs_come_from_the_package(client):
    page = client.get("/docs")
    assert page.status_code == 200
    assert "cdn" not in page.text.lower() and "docs/assets/swagger-ui-bundle.js" in page.text
    assert client.get("/docs/assets/swagger-ui-bundle.js").status_code == 200
    assert client.get("/docs/assets/swagger-ui.css").status_code == 200
    assert client.get("/redoc").status_code == 404  # ReDoc would load from a CDN


def test_refusals_before_the_body_end_the_connection(make_client, tmp_path):
    token = tmp_path / "token"
    token.write_text(TOKEN)
    c = make_client(token_file=token, max_upload_mb=0.01)
    denied = c.post("/v1/predict", content=b"x" * 100)
    assert denied.status_code == 401 and denied.headers["connection"] == "close"
    big = c.post(
        "/v1/predict", content=b"x" * 20_000, headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert big.status_code == 413 and big.headers["connection"] == "close"


def test_audit_log_is_private_and_records_refusals(make_client, tmp_path, films):
    audit = tmp_path / "audit.jsonl"
    token = tmp_path / "token"
    token.write_text(TOKEN)
    c = make_client(token_file=token, audit_log=audit, max_upload_mb=0.01)
    assert stat.S_IMODE(audit.stat().st_mode) == 0o600
    c.post("/v1/predict", content=b"x")  # no token: 401
    good = {"Authorization": f"Bearer {TOKEN}"}
    c.post("/v1/predict", content=b"x" * 20_000, headers=good)  # 413
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [line["http_status"] for line in lines] == [401, 413]
    assert all(line["sha256"] is None for line in lines)


def test_an_existing_readable_audit_log_is_made_private(make_client, tmp_path):
    audit = tmp_path / "audit.jsonl"
    audit.write_text("")
    audit.chmod(0o644)
    make_client(audit_log=audit)
    assert stat.S_IMODE(audit.stat().st_mode) == 0o600


class _Exploding:
    """A runner whose error message quotes what a hostile upload could put there."""

    def logits_and_features(self, images):
        raise RuntimeError("PatientName=DOE^JANE in the header")


def test_an_unexpected_error_is_a_500_logged_by_type_only(engine, tmp_path, films, caplog):
    from fastapi.testclient import TestClient

    from pneumoscope.inference.predictor import Predictor
    from pneumoscope.serving.app import create_app
    from pneumoscope.serving.engine import Engine

    audit = tmp_path / "audit.jsonl"
    settings = ServeSettings(run=RUN_V1, audit_log=audit)
    broken = Engine(Predictor.from_run(engine.loaded, runner=_Exploding()), **settings.batching)
    app = create_app(settings, broken)
    with caplog.at_level(logging.INFO), TestClient(app, base_url="http://localhost") as c:
        r = c.post("/v1/predict", content=films[0].read_bytes())
        assert c.get("/healthz").status_code == 200  # and it keeps serving
    assert r.status_code == 500 and "DOE" not in r.text
    assert "RuntimeError" in caplog.text and "DOE" not in caplog.text
    assert not any(rec.exc_info for rec in caplog.records)
    assert json.loads(audit.read_text().splitlines()[-1])["http_status"] == 500


def test_the_log_filter_keeps_the_type_and_drops_the_rest():
    from pneumoscope.serving.logs import NoDetails

    try:
        raise ValueError("secret DOE^JANE")
    except ValueError:
        import sys

        record = logging.LogRecord("x", logging.ERROR, "f", 1, "failed %s", ("rid",),
                                   sys.exc_info())
    assert NoDetails().filter(record)
    assert record.getMessage() == "failed rid (ValueError)" and record.exc_info is None


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ({"host": "0.0.0.0"}, "without a token"),
        ({"host": "10.1.2.3"}, "--insecure"),
        ({"tls_cert": "cert.pem"}, "--tls-key"),
        ({"max_upload_memory_mb": 10}, "--max-upload-memory-mb"),
    ],
)
def test_risky_starts_are_refused_in_one_line(settings, words):
    with pytest.raises(UserError) as err:
        ServeSettings(run=RUN_V1, **settings)
    assert words in str(err.value)


def test_exposed_hosts_need_a_token_or_insecure(tmp_path):
    token = tmp_path / "token"
    token.write_text(TOKEN)
    assert ServeSettings(run=RUN_V1, host="0.0.0.0", token_file=token).token_file == token
    assert ServeSettings(run=RUN_V1, host="0.0.0.0", insecure=True).insecure
    assert ServeSettings(run=RUN_V1, host="::1").is_loopback


def test_a_short_token_is_refused(tmp_path):
    token = tmp_path / "token"
    token.write_text("short")
    with pytest.raises(UserError) as err:
        ServeSettings(run=RUN_V1, token_file=token).read_token()
    assert "too short" in str(err.value) and "openssl rand" in str(err.value)
