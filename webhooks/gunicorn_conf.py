"""Gunicorn settings: access logs carry the path only, never the query string (webhook tokens)."""

accesslog = "-"
access_log_format = '%(h)s "%(m)s %(U)s" %(s)s %(B)s %(M)sms'
workers = 2
threads = 4
timeout = 30
graceful_timeout = 10
