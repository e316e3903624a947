# One image for every process: `exam-events ingress`, `exam-events consumer`, `exam-events lrs-forward`.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY common ./common
COPY ingress ./ingress
COPY consumer ./consumer
COPY handlers ./handlers
COPY schemas ./schemas
COPY cli ./cli
COPY lrs_forward ./lrs_forward
COPY scripts ./scripts
RUN pip install --no-cache-dir '.[otlp]' && python -m consumer.asyncapi_page && useradd --system --uid 10001 app
USER app
CMD ["exam-events", "consumer"]
