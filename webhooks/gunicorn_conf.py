"""Gunicorn settings: access logs carry the path only, never the query string (webhook tokens)."""

accesslog = "-"
access_log_format = '%(h)s "%(m)s %(U)s" %(s)s %(B)s %(M)sms'
workers = 2
threads = 4
timeout = 30
graceful_timeout = 10
# Several receivers may run on one host (tests, the local stack): no shared control socket.
control_socket_disable = True
