"""A hello-world Flask app: the receiver's floor, served by gunicorn on the receiver's settings."""

from __future__ import annotations

from flask import Flask, jsonify
from flask.typing import ResponseReturnValue


def create_app() -> Flask:
    """POST to any path answers 200 with a small JSON, so wrk can send it the receiver's own
    requests; GET /healthz tells it is up."""
    app = Flask("hello")

    @app.get("/healthz")
    def healthz() -> ResponseReturnValue:
        return jsonify({"status": "ok"})

    @app.post("/", defaults={"path": ""})
    @app.post("/<path:path>")
    def hello(path: str) -> ResponseReturnValue:
        return jsonify({"hello": "world"})

    return app
