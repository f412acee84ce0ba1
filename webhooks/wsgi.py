"""WSGI entry point: `gunicorn webhooks.wsgi:app`."""

from webhooks.app import create_app

app = create_app()
