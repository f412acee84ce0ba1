# syntax=docker/dockerfile:1
# One image for every role of imagine-pipeline; the command picks the role:
#   receiver  gunicorn -c python:webhooks.gunicorn_conf -b 0.0.0.0:8000 webhooks.wsgi:app   (default)
#   worker    celery -A workers.worker worker -Q submit,finalize,notify,reconcile
#   beat      celery -A workers.worker beat -s /tmp/celerybeat-schedule
#   flower    python -m workers.flower          (FLOWER_BASIC_AUTH or OAuth settings required)
#   CLI       imagine <command>                 (pipeline/cli.py)
# No Docker engine runs where this repository is developed: this file is checked by parsing and by
# hadolint (tests/unit/test_deploy_files.py), not by building it.
#
# The base is pinned by version, the interpreter the lock (constraints.txt) was resolved with. Pin
# it by digest too (python:3.11.7-slim-bookworm@sha256:...) once a registry is at hand: a digest
# cannot be looked up or verified offline, so none is written here.
ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
# The slim base has no compiler: every dependency must come as a wheel, as the lock's versions do
# for CPython 3.11 on manylinux (gevent, greenlet, hiredis, pillow included).
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY pipeline/ pipeline/
COPY workers/ workers/
COPY webhooks/ webhooks/
COPY infra/ infra/
COPY imagine_client/ imagine_client/
# -c holds every dependency to the lock: the image runs exactly the versions the tests ran. The
# venv's pip is removed after use; the final stage gets the venv alone.
RUN /opt/venv/bin/pip install -c constraints.txt . \
    && /opt/venv/bin/pip uninstall --yes pip

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    LOG_FORMAT=json
RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin imagine
COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
USER 10001:10001
EXPOSE 8000
# One image, five roles: a single HEALTHCHECK would mark every worker, beat and CLI container
# unhealthy. Each role's check is in infra/compose.yaml and its probes in infra/k8s/.
HEALTHCHECK NONE
CMD ["gunicorn", "-c", "python:webhooks.gunicorn_conf", "-b", "0.0.0.0:8000", "webhooks.wsgi:app"]
