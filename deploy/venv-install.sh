#!/bin/sh
# Creates /opt/venv and installs a requirements file into it, from the package index or, with
# PIP_SOURCE=wheelhouse (a build argument of deploy/Dockerfile), only from /tmp/wheelhouse (closed networks).
set -eu
python3 -m venv /opt/venv
if [ "${PIP_SOURCE:-index}" = "wheelhouse" ]; then
    /opt/venv/bin/pip install --no-index --find-links /tmp/wheelhouse -r "$1"
else
    /opt/venv/bin/pip install -r "$1"
fi
