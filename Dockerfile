# The mm image: the library, the Celery processes, the gateway and the CLI (the runtime is Ollama).
# The [server] extra: Flower, the gateway, the NVML binding and the Ollama client; no llama.cpp.
FROM python:3.11-slim
WORKDIR /app
COPY setup.cfg pyproject.toml README.md ./
COPY mm ./mm
COPY workers ./workers
COPY beat ./beat
RUN pip install --no-cache-dir '.[server]' && useradd --create-home mm
USER mm
ENTRYPOINT []
