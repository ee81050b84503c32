#!/bin/sh
# Precompile a model and pack it: the builder stage of deploy/Dockerfile, or a CI job
# on a GPU runner. Usage: deploy/build-cache.sh MODEL SIZES DEVICE OUT.tar.zst
set -eu
model=$1 sizes=$2 device=$3 out=$4
ccache precompile "$model" --sizes "$sizes" --device "$device"
ccache fingerprint --device "$device" --json > "${out%.tar.zst}.fingerprint.json"
ccache pack "$out" --compatible-only
