# One image for the four Dagster services of docker-compose.yml (user_code, webserver, daemon)
# and for the run pods/tasks of the scale-out variants (deploy/helm, deploy/ecs).
#
#   docker build -t scene-pipeline .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DAGSTER_HOME=/opt/dagster/dagster_home

WORKDIR /opt/dagster/app

# Dependencies first, in their own layer: read them from pyproject.toml alone, so that a change
# to the code (or the README) reuses this layer and only a change of pyproject.toml reinstalls.
COPY pyproject.toml ./
RUN python -c "import tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; open('/tmp/requirements.txt', 'w').write('\n'.join(deps))" \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# A non-root user owns the instance folder and the local data folder (named volumes mounted
# there inherit this ownership when they are first created).
RUN groupadd --system --gid 10001 dagster \
    && useradd --system --uid 10001 --gid dagster --home-dir /opt/dagster --shell /usr/sbin/nologin dagster \
    && mkdir -p "$DAGSTER_HOME/storage" /opt/dagster/data \
    && chown -R dagster:dagster /opt/dagster

# The code, then the package itself without its dependencies (they are in the layer above).
COPY README.md ./
COPY scene_pipeline ./scene_pipeline
COPY deploy ./deploy
RUN pip install --no-deps . \
    && cp deploy/dagster.yaml "$DAGSTER_HOME/dagster.yaml" \
    && chown dagster:dagster "$DAGSTER_HOME/dagster.yaml"

USER dagster

# The user_code service's gRPC port and the webserver's port.
EXPOSE 4000 3000

# Overridden by each service in docker-compose.yml; alone, the image serves the code location.
CMD ["dagster", "code-server", "start", "-h", "0.0.0.0", "-p", "4000", "-m", "scene_pipeline.definitions", "--location-name", "scene_pipeline"]
