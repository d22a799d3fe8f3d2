# Kalami Gateway: the production image (docs/operations.md, "Deploying with containers and
# Kubernetes"). From the repository root:
#
#   docker build -t kalami-gateway:0.1.0 .
#
# It installs what a production host installs (docs/operations.md, "Installing"): the locked
# runtime set with `pip install --require-hashes -r requirements/runtime.txt`, then the
# gateway's own wheel with `--no-deps`. tests/integration/test_install.py runs those same
# commands into a fresh venv on every `make test` and serves from it;
# tests/integration/test_deploy_files.py holds this file to them and lints it with hadolint.
# No container engine runs where the tests run, so `docker build` itself is not exercised.
#
# The base is pinned by tag, not by digest: no registry of images is reachable where this file
# was written, so no digest could be read and checked. To pin it, read the digest where the
# image is built and pass it in:
#   docker buildx imagetools inspect python:3.11.14-slim-bookworm
#   docker build --build-arg PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:<digest> ...
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# ---- build: the venv, made where pip and the build backend may run ----
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
# The runtime set first, in a layer of its own: it is rebuilt only when the lock changes.
# --require-hashes refuses any file whose hash is not in the lock (so no test or lint tool,
# and nothing unpinned, can get in); pip compiles every module to bytecode as it installs.
COPY requirements/runtime.txt requirements/runtime.txt
RUN python -m venv /opt/kalami-gateway \
    && /opt/kalami-gateway/bin/pip install --require-hashes -r requirements/runtime.txt
# The wheel, built as tests/integration/test_install.py builds it (the build backend from
# PyPI, isolated), then installed without dependencies: the lock brought every one.
COPY pyproject.toml README.md LICENSE ./
COPY src/ src/
RUN /opt/kalami-gateway/bin/pip wheel --no-deps -w /dist . \
    && /opt/kalami-gateway/bin/pip install --no-deps /dist/kalami_gateway-*.whl

# ---- runtime: the venv and nothing that built it ----
FROM ${PYTHON_IMAGE}
# A numeric user: Kubernetes' runAsNonRoot can only verify a numeric one.
RUN groupadd --system --gid 10001 kalami \
    && useradd --system --uid 10001 --gid kalami --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin kalami
COPY --from=build /opt/kalami-gateway /opt/kalami-gateway
COPY deploy/docker/healthcheck.py /opt/kalami-gateway/healthcheck.py
# Bytecode was written at install (root-owned, read-only to the gateway). At run time only
# /tmp is written (serve --workers keeps its workers' metrics in a temporary directory), so the
# root filesystem may be mounted read-only with a writable /tmp. Logs: JSON lines on stdout.
ENV PATH=/opt/kalami-gateway/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LOG_FORMAT=json \
    GATEWAY_HOST=0.0.0.0 \
    GATEWAY_PORT=3000
# No .env here: settings come from the environment and secrets from files (NAME_FILE).
WORKDIR /opt/kalami-gateway
USER 10001:10001
EXPOSE 3000
# GET /health on the container's own port (the image has no curl; the script is stdlib only).
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD ["/opt/kalami-gateway/bin/python", "/opt/kalami-gateway/healthcheck.py"]
# Exec form: the gateway is PID 1 and SIGTERM (docker stop, the kubelet) reaches it directly;
# it drains (1012 and resume with REDIS_URL, else 1001) and exits 0. No shell in between.
STOPSIGNAL SIGTERM
CMD ["kalami-gateway", "serve"]
