# One image for both processes: `exam-events ingress` or `exam-events consumer`.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY common ./common
COPY ingress ./ingress
COPY consumer ./consumer
COPY handlers ./handlers
COPY schemas ./schemas
COPY scripts ./scripts
RUN pip install --no-cache-dir '.[otlp]' && python -m consumer.asyncapi_page && useradd --system --uid 10001 app
USER app
CMD ["exam-events", "consumer"]
