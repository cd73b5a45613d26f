# The flash-sale image: the worker, Flower and the `flashsale` CLI (see docker-compose.yml).
# An exact base image: a rebuild gets the same Python and Debian release.
FROM python:3.11.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md LICENSE constraints.txt ./
COPY locking ./locking
COPY tasks ./tasks
COPY worker ./worker
# The exact versions of constraints.txt; the `worker` extra adds Flower.
RUN pip install -c constraints.txt ".[worker]" \
    && useradd --system --uid 10001 --create-home --shell /usr/sbin/nologin flashsale

# Run from an empty directory as an unprivileged user: the installed package is what runs.
WORKDIR /home/flashsale
USER flashsale

CMD ["celery", "-A", "worker", "worker", "--loglevel=INFO"]
