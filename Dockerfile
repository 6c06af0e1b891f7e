# GPU worker image: a Prefect process worker on work pool `gpu` that runs mobitune trials.
#   docker build -t mobitune-worker .
#   docker run --gpus device=0 -e PREFECT_API_URL=http://prefect:4200/api \
#     -e AWS_ENDPOINT_URL=http://minio:9000 -e AWS_ACCESS_KEY_ID=... -e AWS_SECRET_ACCESS_KEY=... mobitune-worker
FROM pytorch/pytorch:2.14.1-cuda13.0-cudnn9-runtime

ENV PYTHONUNBUFFERED=1 \
    DVC_NO_ANALYTICS=1 \
    DO_NOT_TRACK=1 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    PREFECT_FLOWS_HEARTBEAT_FREQUENCY=30 \
    PREFECT_WORKER_QUERY_SECONDS=2 \
    PIP_NO_CACHE_DIR=1

WORKDIR /opt/mobitune
COPY pyproject.toml README.md ./
COPY src ./src
COPY flows ./flows
COPY params.yaml prefect.yaml dvc.yaml ./
# the base image already holds the pinned torch 2.14.1 (CUDA 13.0); pip adds the rest
RUN pip install -e .

# one trial at a time: one worker per GPU (pin it with --gpus / CUDA_VISIBLE_DEVICES)
CMD ["prefect", "worker", "start", "--pool", "gpu", "--type", "process", "--limit", "1"]
