#!/usr/bin/env bash
# make test-containers: a Docker engine (Debian's docker.io, installed and started here if missing), the worker
# image built from the local base and wheelhouse, then the tests marked `containers`. The engine this script
# started is stopped at the end; the tests remove their containers and volumes (images stay: the build cache).
set -euo pipefail
started_engine=""
cleanup() {
  ids=$(docker ps -aq --filter ancestor=mobitune-worker:test --filter ancestor=mobitune-postgres:test \
    --filter ancestor=mobitune-s3:test 2>/dev/null || true)
  [ -z "$ids" ] || docker rm -f $ids >/dev/null 2>&1 || true
  if [ -n "$started_engine" ]; then kill "$started_engine" 2>/dev/null || true; wait "$started_engine" 2>/dev/null || true; fi
}
trap cleanup EXIT
if ! command -v dockerd >/dev/null || ! command -v docker-compose >/dev/null; then
  { command -v apt-get >/dev/null && [ "$(id -u)" = 0 ] && apt-get update -qq &&
    apt-get install -y -qq docker.io docker-compose >/dev/null; } ||
    { echo "error: no Docker engine or compose, and they could not be installed:" \
        "run 'sudo apt-get install docker.io docker-compose'" >&2; exit 1; }
fi
if ! docker info >/dev/null 2>&1; then
  dockerd >/tmp/mobitune-dockerd.log 2>&1 &
  started_engine=$!
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || { echo "error: dockerd did not start; its log: /tmp/mobitune-dockerd.log" >&2; exit 1; }
fi
bash docker/base.sh mobitune-base:bookworm
bash docker/wheelhouse.sh docker/wheelhouse
args=(--quiet --build-arg BASE=mobitune-base:bookworm --build-arg WHEELHOUSE=1 .)
docker build --tag mobitune-worker:test "${args[@]}"
# the install stage tagged, so it stays as the next build's cache while older untagged stages are pruned
docker build --target install --tag mobitune-worker:install-cache "${args[@]}" >/dev/null
docker image prune --force >/dev/null
# the compose stack's stand-ins for images only a registry has: PostgreSQL from Debian, moto for MinIO
docker build --quiet --network host --tag mobitune-postgres:test -f docker/standins/postgres.Dockerfile docker/standins
docker build --quiet --tag mobitune-s3:test -f docker/standins/s3.Dockerfile docker/standins
MOBITUNE_NO_SKIPS=1 pytest -rs -m containers "$@" && status=0 || status=$?
[ "$status" -ne 5 ] || echo "error: pytest collected no container test" >&2
exit "$status"
