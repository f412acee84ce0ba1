"""Floor worker entry point: `celery -A infra.bench.floor_worker worker -Q bench-floor`."""

from infra.bench.floor import create_floor_celery

app = create_floor_celery()
