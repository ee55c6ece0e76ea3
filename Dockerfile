# One image for every role of skillq: the compose file picks the command (api, worker, scheduler).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    SKILLQ_SETTINGS=/etc/skillq/settings.toml

WORKDIR /app
COPY pyproject.toml README.md ./
COPY actors actors
COPY api api
COPY brokers brokers
COPY skillq skillq
COPY storage storage
COPY skills skills
# The folders above install as one package, skillq (skillq.actors, skillq.api, ...).
RUN pip install . && useradd --create-home --uid 1000 skillq \
    && install -d -o skillq -g skillq /var/lib/skillq
COPY deploy/settings.compose.toml /etc/skillq/settings.toml

USER skillq
# Not /app: there the source `skillq/` folder (only part of the package) would come first on
# sys.path for `python -m skillq` and `dramatiq skillq.actors`, and hide the installed one.
WORKDIR /home/skillq
EXPOSE 8000
CMD ["skillq", "api"]
