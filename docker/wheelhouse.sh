#!/usr/bin/env bash
# The worker image's packages as wheels, for an offline `docker build --build-arg WHEELHOUSE=1`: the project and
# every pinned dependency (torch with its CUDA wheels: ~4 GB), resolved by the host's pip for the image's
# Python, each at the version of constraints.txt (make install's). Debian's python3 is 3.11.2, below the 3.11.3
# that some markers test (redis wants async-timeout there), so such wheels are added by name and exact version:
# the venv, on a newer Python, never installs them, so constraints.txt does not name them.
#   bash docker/wheelhouse.sh [FOLDER]     # default docker/wheelhouse; wheels already there are kept
# Also the wheels of the compose stack's S3 stand-in (moto's server, pinned as in the tests), in
# docker/standins/wheels.
set -euo pipefail
folder=${1:-docker/wheelhouse}
python=${PYTHON:-.venv/bin/python}
mkdir -p "$folder"
"$python" -m pip wheel --quiet --wheel-dir "$folder" --find-links "$folder" -c constraints.txt . "async-timeout==5.0.1"
moto=$(grep -o '"moto\[server\]==[^"]*"' pyproject.toml | tr -d '"')
"$python" -m pip wheel --quiet --wheel-dir docker/standins/wheels --find-links "$folder" -c constraints.txt "$moto"
echo "$folder: $(ls "$folder"/*.whl | wc -l) wheels, $(du -sh "$folder" | cut -f1)"
