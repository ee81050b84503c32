#!/bin/sh
# Precompile a model, pack it and, given a registry REF, push it: the builder stage of
# deploy/Dockerfile, or a CI job on a GPU runner.
# Usage: deploy/build-cache.sh MODEL SIZES DEVICE OUT.tar.zst [REF]
# REF (registry.example.com/team/model-cache:v1) takes the credentials of `docker login`
# or CCACHE_CLI_REGISTRY_TOKEN; a push uploads only the layers the registry lacks.
set -eu
model=$1 sizes=$2 device=$3 out=$4
ccache-cli precompile "$model" --sizes "$sizes" --device "$device"
ccache-cli fingerprint --device "$device" --json > "${out%.tar.zst}.fingerprint.json"
ccache-cli pack "$out" --compatible-only
if [ $# -ge 5 ]; then ccache-cli push "$5" --compatible-only; fi
