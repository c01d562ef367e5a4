# The fflab service image: API (default command), workers and admin CLI.
# torch comes from pyproject's pin; PyPI's Linux x86_64 wheel ships the CUDA
# runtime, so the same image trains on GPUs (with the NVIDIA container toolkit)
# and on CPUs.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    FFLAB_API_HOST=0.0.0.0 \
    FFLAB_DATA_ROOT=/data \
    FFLAB_VAR_DIR=/var/lib/fflab

WORKDIR /app

# Dependencies first, from pyproject's pins, so that code changes reuse this layer.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt

COPY . .
# Editable, so that the migrations/ folder and alembic.ini stay beside the code.
RUN pip install --no-deps -e . \
    && useradd --create-home --uid 1000 fflab \
    && mkdir -p /data /var/lib/fflab \
    && chown fflab:fflab /data /var/lib/fflab
USER fflab

EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"
CMD ["uvicorn", "--factory", "api.main:create_app", "--http", "api.protocol:HttpProtocol", "--host", "0.0.0.0", "--port", "8000", "--no-proxy-headers"]
