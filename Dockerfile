# One image for every rayr node: `docker compose up` (docker-compose.yml) runs Redis, a head and
# worker nodes from it. Alone, `docker run --shm-size 2g rayr` is a one-container cluster whose
# head starts its own Redis.
FROM python:3.12-slim

# rayr's own files only (.dockerignore leaves tests, docs and caches out)
COPY . /opt/rayr
RUN pip install --no-cache-dir /opt/rayr \
    && useradd --create-home --uid 1000 rayr

# sessions, logs and spilled objects; /dev/shm holds the object store (give it --shm-size)
USER rayr
ENV RAYR_TEMP_DIR=/home/rayr/sessions
WORKDIR /home/rayr

# --block: the node stays the container's main process and stops cleanly on `docker stop`
CMD ["rayr", "start", "--head", "--block"]
