# GPU worker image: a Prefect worker on work pool `gpu` that runs mobitune trials, as a non-root user.
#   docker build -t mobitune-worker .                          # from the package index, on PyTorch's CUDA image
#   bash docker/base.sh && bash docker/wheelhouse.sh           # offline: a local Debian base and a wheelhouse
#   docker build -t mobitune-worker --build-arg BASE=mobitune-base:bookworm --build-arg WHEELHOUSE=1 .
#   docker run --gpus device=0 -e MOBITUNE_HOST_GPUS=0 --network host -e PREFECT_API_URL=http://127.0.0.1:4200/api \
#     -e AWS_ENDPOINT_URL=http://127.0.0.1:9000 -e AWS_ACCESS_KEY_ID=... -e AWS_SECRET_ACCESS_KEY=... \
#     -v mobitune-artifacts:/opt/mobitune/artifacts -v mobitune-cache:/home/mobitune/.cache mobitune-worker
ARG BASE=pytorch/pytorch:2.14.1-cuda13.0-cudnn9-runtime

FROM ${BASE} AS install
ARG WHEELHOUSE=0
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /opt/mobitune
COPY pyproject.toml README.md constraints.txt ./
COPY src ./src
COPY docker/wheelhouse ./wheelhouse
# a venv that sees the base's own packages: PyTorch's image already holds the pinned torch 2.14.1 (CUDA 13.0);
# every package the venv gets is at the version of constraints.txt, as in `make install`
RUN python3 -m venv --system-site-packages /opt/venv \
 && if [ "$WHEELHOUSE" = 1 ]; then \
      /opt/venv/bin/pip install --no-index --find-links wheelhouse -c constraints.txt . ; \
    else \
      /opt/venv/bin/pip install -c constraints.txt . ; \
    fi

# the wheelhouse stays in the install stage: the image gets the venv alone
FROM ${BASE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    DVC_NO_ANALYTICS=1 \
    DO_NOT_TRACK=1 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    PREFECT_FLOWS_HEARTBEAT_FREQUENCY=30 \
    PREFECT_WORKER_QUERY_SECONDS=2 \
    PREFECT_HOME=/home/mobitune/.prefect
RUN useradd --create-home --uid 1000 mobitune
COPY --from=install /opt/venv /opt/venv
WORKDIR /opt/mobitune
COPY --chown=mobitune flows ./flows
COPY --chown=mobitune params.yaml prefect.yaml prefect.toml dvc.yaml ./
# trials' local artifacts (prepared data, shared warmups, checkpoints) and torch's weight cache: keep them
RUN mkdir -p artifacts /home/mobitune/.cache && chown mobitune artifacts /home/mobitune/.cache
VOLUME ["/opt/mobitune/artifacts", "/home/mobitune/.cache"]
USER mobitune

# one trial at a time: one worker per GPU (pin it with --gpus / CUDA_VISIBLE_DEVICES)
CMD ["prefect", "worker", "start", "--pool", "gpu", "--type", "process", "--limit", "1"]
