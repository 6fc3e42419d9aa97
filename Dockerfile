# One image for the api, worker and migrate services (docker-compose.yml).
# For GPU workers build FROM an nvidia/cuda runtime image with the matching torch wheel instead.
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY api ./api
COPY worker ./worker
COPY vtrans_core ./vtrans_core
COPY migrations ./migrations
RUN pip install torch && pip install -e '.[s3]'
RUN useradd --create-home vtrans && mkdir -p /data && chown vtrans /data
USER vtrans
ENV VTRANS_DATA_DIR=/data
EXPOSE 8000
CMD ["vtrans", "api", "--host", "0.0.0.0"]
