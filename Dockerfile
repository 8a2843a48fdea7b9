# The mm image: the library, the Celery processes, the gateway and the CLI (the runtime is Ollama).
FROM python:3.11-slim
WORKDIR /app
COPY setup.cfg pyproject.toml README.md celeryconfig.py ./
COPY mm ./mm
COPY workers ./workers
COPY beat ./beat
RUN pip install --no-cache-dir . && useradd --create-home mm
USER mm
ENTRYPOINT []
