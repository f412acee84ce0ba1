"""Worker entry point: `celery -A workers.worker worker`."""

from workers.celery_app import create_worker_app

app = create_worker_app()
