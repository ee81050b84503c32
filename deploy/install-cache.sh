#!/bin/sh
# Bring a cache into the store and check it: the runtime stage of deploy/Dockerfile
# (from an archive) and the initContainer of deploy/kubernetes.yaml (from a registry).
# Usage: deploy/install-cache.sh ARCHIVE|REF [TARGET.json]   (the store: $CCACHE_CLI_STORE)
# A REF (host/repository:tag) is pulled: only the blobs the store lacks are downloaded.
# With TARGET (written by build-cache.sh), entries are checked against the machine
# that will serve rather than this one (an image build often has no GPU).
set -eu
if [ -f "$1" ] || [ "$1" = - ]; then ccache-cli unpack "$1"; else ccache-cli pull "$1"; fi
if [ $# -ge 2 ]; then ccache-cli verify --target "$2"; else ccache-cli verify; fi
