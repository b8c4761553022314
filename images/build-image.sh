#!/bin/sh
# Build (or reuse) the CDP appliance image: `make image`.  See images/build_image.py.
#   images/build-image.sh [--print-path | --force | --wheelhouse]
exec python3 "$(dirname "$(readlink -f "$0")")/build_image.py" "$@"
