"""Hello-world Flask apps: the receiver's floors, served by gunicorn on the receiver's settings."""

from __future__ import annotations

import json
import os

import redis
from flask import Flask, jsonify, request
from flask.typing import ResponseReturnValue


def create_app() -> Flask:
    """POST to any path answers 200 with a small JSON, so wrk can send it the receiver's own
    requests; GET /healthz tells it is up.

    POST under /floor/redis/ also does what any webhook handler must: it reads the JSON body
    and makes one Redis round trip (a GET over a client built once, as the receiver's is),
    which tells how much of the receiver's cost those two take on their own."""
    app = Flask("hello")
    client = redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))

    @app.get("/healthz")
    def healthz() -> ResponseReturnValue:
        return jsonify({"status": "ok"})

    @app.post("/floor/redis/<path:path>")
    def redis_floor(path: str) -> ResponseReturnValue:
        body = json.loads(request.get_data())
        client.get(f"bench:floor:{path}")
        return jsonify({"hello": "world", "items": len(body)})

    @app.post("/", defaults={"path": ""})
    @app.post("/<path:path>")
    def hello(path: str) -> ResponseReturnValue:
        return jsonify({"hello": "world"})

    return app
