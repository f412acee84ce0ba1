"""Worker entry point: `celery -A workers.worker worker`."""
from workers.celery_app import create_celery

app = create_celery()
