# One image for both processes: `python -m ingress` or `python -m consumer`.
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
RUN pip install --no-cache-dir . && useradd --system --uid 10001 app
USER app
CMD ["python", "-m", "consumer"]
