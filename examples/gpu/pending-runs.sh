#!/usr/bin/env bash
# Forwarder: keeps the documented entry point examples/gpu/pending-runs.sh working; the script lives in scripts/gpu/.
exec bash "$(dirname "$0")/../../scripts/gpu/pending-runs.sh" "$@"
