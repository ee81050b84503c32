#!/bin/sh
# Unpack a packed cache into the store and check it: the runtime stage of
# deploy/Dockerfile, and the initContainer of deploy/kubernetes.yaml.
# Usage: deploy/install-cache.sh ARCHIVE [TARGET.json]   (the store: $CCACHE_CLI_STORE)
# With TARGET (written by build-cache.sh), entries are checked against the machine
# that will serve rather than this one (an image build often has no GPU).
set -eu
ccache unpack "$1"
if [ $# -ge 2 ]; then ccache verify --target "$2"; else ccache verify; fi
