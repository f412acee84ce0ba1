"""Floor handler entry point: `gunicorn infra.bench.floor_wsgi:app` with the receiver's settings."""

from infra.bench.floor import create_floor_app

app = create_floor_app()
