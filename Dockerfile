# One image for every process: the API and each worker differ only by their command.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY tododb ./tododb
RUN pip install . \
    && useradd --system --uid 10001 --home-dir /app tododb
USER tododb

EXPOSE 8000
CMD ["todo", "serve", "--host", "0.0.0.0", "--port", "8000"]
