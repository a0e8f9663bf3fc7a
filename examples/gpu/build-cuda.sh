#!/usr/bin/env bash
# Forwarder: keeps the documented entry point examples/gpu/build-cuda.sh working; the script lives in scripts/gpu/.
exec bash "$(dirname "$0")/../../scripts/gpu/build-cuda.sh" "$@"
