# A stand-in for MinIO where no registry is reachable: moto's S3 server (the one the tests use) in the worker
# image, from the stand-in wheels of docker/wheelhouse.sh --standins. It keeps objects in memory only.
ARG WORKER=mobitune-worker:test
FROM ${WORKER}
USER root
COPY wheels /tmp/wheels
RUN /opt/venv/bin/pip install --quiet --no-index --find-links /tmp/wheels "moto[server]" && rm -rf /tmp/wheels
USER mobitune
CMD ["moto_server", "-H", "0.0.0.0", "-p", "9000"]
