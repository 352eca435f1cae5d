#!/bin/bash
# deployment/run_predictor.sh: start `usp serve` with the environment of the specification (§5, §7).
#
#   deployment/run_predictor.sh --source 'redis://redis:6379/0?stream=ticks&group=usp' \
#       --sink 'redis://redis:6379/0?stream=predictions' --metrics-port 9108 --snapshot-every 30
#
# Every argument goes to `usp serve` unchanged. The script execs the service, so it keeps this
# process: a container's SIGTERM reaches `usp serve` itself, which then shuts down gracefully
# (docs/service.md). A variable already set in the environment is kept, so a deployment can
# override any of the values below.
set -euo pipefail

# GPU memory (spec §5): JAX takes at most 70% of the device, allocates on demand with the
# platform allocator (no preallocated arena to fragment), growth allowed. Read by JAX when it
# starts its GPU backend; harmless on CPU-only hosts.
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.7}"
export XLA_PYTHON_CLIENT_ALLOCATOR="${XLA_PYTHON_CLIENT_ALLOCATOR:-platform}"
export TF_FORCE_GPU_ALLOW_GROWTH="${TF_FORCE_GPU_ALLOW_GROWTH:-true}"
# The core is float64 throughout (USP switches x64 on as it starts; stated here as well).
export JAX_ENABLE_X64="${JAX_ENABLE_X64:-true}"
# Persistent compilation cache: a restart compiles nothing it compiled before.
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/usp/jax}"
# Log lines reach the container's log as they are written.
export PYTHONUNBUFFERED=1

echo "[INFO] XLA memory fraction: ${XLA_PYTHON_CLIENT_MEM_FRACTION}" >&2
echo "[INFO] XLA allocator: ${XLA_PYTHON_CLIENT_ALLOCATOR}" >&2
echo "[INFO] GPU memory growth: ${TF_FORCE_GPU_ALLOW_GROWTH}" >&2
echo "[INFO] JAX compilation cache: ${JAX_COMPILATION_CACHE_DIR}" >&2

exec "${USP_COMMAND:-usp}" serve "$@"
