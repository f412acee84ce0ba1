"""The local S3 server: moto's, with no query string (a presigned signature) in its access log."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from types import FrameType

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import run_simple


class PathOnlyRequestHandler(MotoRequestHandler):
    """Logs the method and path of each request; a presigned PUT's query string is its secret."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        try:
            line = f"{self.command} {self.path.partition('?')[0]} {self.request_version}"
        except AttributeError:  # no parsable request line: log none of it
            line = "(unparsable request line)"
        self.log("info", '"%s" %s %s', line, code, size)


def _exit(signum: int, frame: FrameType | None) -> None:
    sys.exit(0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, default=5000)
    args = parser.parse_args(argv)
    # moto builds some URLs from MOTO_PORT, as its own server does.
    os.environ.setdefault("MOTO_PORT", str(args.port))
    signal.signal(signal.SIGTERM, _exit)
    app = DomainDispatcherApplication(create_backend_app)
    run_simple(args.host, args.port, app, threaded=True, request_handler=PathOnlyRequestHandler)


if __name__ == "__main__":
    main()
