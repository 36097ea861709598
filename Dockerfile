# The flowaudit worker image (used by docker-compose.yml).
FROM python:3.11-slim
WORKDIR /app
# Graphviz's dot draws the data-flow map the worker serves at /flowaudit/map/ (sinks/flowmap.py)
RUN apt-get update && apt-get install -y --no-install-recommends graphviz \
    && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml README.md ./
COPY flowaudit ./flowaudit
COPY common ./common
COPY domain ./domain
COPY streams ./streams
COPY sinks ./sinks
COPY schemas ./schemas
COPY policy ./policy
RUN pip install --no-cache-dir . && useradd --system --home /var/lib/flowaudit flowaudit \
    && mkdir -p /var/lib/flowaudit && chown flowaudit /var/lib/flowaudit
USER flowaudit
ENV FLOWAUDIT_DATA_DIR=/var/lib/flowaudit \
    FLOWAUDIT_METRICS_BIND=0.0.0.0 \
    FLOWAUDIT_WEB_BIND=127.0.0.1
EXPOSE 9464
HEALTHCHECK --interval=15s --timeout=5s --retries=5 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9464/metrics', timeout=3)"
CMD ["flowaudit", "worker"]
