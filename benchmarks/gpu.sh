#!/usr/bin/env bash
# The GPU checks and figures in one run, each step bounded in time and logged as it goes:
# the GPU tests, then per-call time (default mode, and reduce-overhead with CUDA graphs)
# and warm starts of a 16-layer bf16 Llama decoder,
# the generation recipe, and a range of batch sizes. Steps whose logs already end in
# "done" are skipped, so a run cut short goes on where it stopped (a step that ran out
# of time runs again).
#
#     bash benchmarks/gpu.sh LOG_FOLDER [STEP...]
#
# STEP: tests, origins, guards, per_call, graphs, warm_start, generate, size_range,
# package (default: all but package, in that order). `origins` serves the bundled
# example through ccache_cli.compile and prints the stack that first imports Dynamo or
# Inductor (the serving script's own import, after its report says
# `"compile_stack": []`, is its counters'); `guards` lists the decoder's guards whose
# paths ccache cannot parse; `package` profiles one AOTInductor package build of the
# decoder (size 1).
set -u
logs=${1:?usage: bash benchmarks/gpu.sh LOG_FOLDER [STEP...]}
shift
mkdir -p "$logs"
cd "$(dirname "$0")/.." || exit 1
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(tests origins guards per_call graphs warm_start generate size_range)
decoder=benchmarks/models/llama_decoder.py:build
# The GPU tests in three processes where pytest-xdist is there (one GPU serves them all).
workers=(-n 0)
python3 -c "import xdist" 2>/dev/null && workers=(-n 3)

run_step() {  # NAME SECONDS COMMAND...
  local name=$1 seconds=$2
  shift 2
  local log="$logs/$name.log"
  if [ -f "$log" ] && tail -n 1 "$log" | grep -q "^done"; then
    echo "$name: done before, skipped"
    return
  fi
  echo "$name: running (at most ${seconds} s), log in $log"
  timeout "$seconds" "$@" > "$log" 2>&1
  local code=$?
  if [ $code -eq 124 ]; then
    echo "timed out after ${seconds} s: $name" >> "$log"
  else
    echo "done $name: exit $code" >> "$log"
  fi
  tail -n 25 "$log"
}

for step in "${steps[@]}"; do
  case $step in
    tests) run_step tests 400 python3 -m pytest tests/test_gpu.py -q "${workers[@]}" -p no:cacheprovider --tb=short -rfEs ;;
    origins) run_step origins 300 bash -c "python3 -m ccache_cli --store '$logs/example-store' precompile \
      ccache_cli.examples.tiny_transformer --sizes 1,8 --device cuda >/dev/null && CCACHE_CLI_VIEWS='$logs/views' \
      python3 -m ccache_cli --store '$logs/example-store' run -- python3 scripts/import_origin.py \
      torch._dynamo,torch._inductor tests/programs/serve_example.py api '[1, 8]' cuda" ;;
    guards) LLAMA_LAYERS=2 run_step guards 150 python3 scripts/guard_sources.py "$decoder" 1 cuda ;;
    per_call) run_step per_call 360 python3 benchmarks/per_call.py --model "$decoder" --device cuda --size 1 --calls 100 ;;
    graphs) run_step graphs 200 python3 benchmarks/per_call.py --model "$decoder" --device cuda --size 1 --calls 100 \
      --mode reduce-overhead ;;
    warm_start) run_step warm_start 400 python3 benchmarks/warm_start.py --model "$decoder" --device cuda --sizes 1,8 \
      --ways eager,cold,ccache_route,ccache_api ;;
    generate) run_step generate 400 python3 benchmarks/generate.py --device cuda ;;
    package) run_step package 400 python3 scripts/package_profile.py "$decoder" 1 cuda ;;
    size_range) run_step size_range 500 python3 benchmarks/size_range.py --device cuda --range 1-256 --static 1,8,64,256 ;;
    *) echo "unknown step $step" >&2; exit 2 ;;
  esac
done
