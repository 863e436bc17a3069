#!/usr/bin/env bash
# The torchrun launch of tools/dist_train.sh and tools/dist_test.sh, sourced by them: "$0" and "$@" are theirs.
# They set DIST_ENTRY (the script in tools/ to run, e.g. train.py) and DIST_ARGS (the names of its positional
# arguments, the GPU count last, e.g. "CONFIG GPUS"); the arguments after those are passed on to DIST_ENTRY.
# Several nodes: run the caller on each with NNODES, NODE_RANK (0..NNODES-1), MASTER_ADDR (node 0's address) and
# PORT set. PYTHON picks the interpreter (default: python).
set -euo pipefail
read -ra DIST_NAMES <<< "$DIST_ARGS"
DIST_N=${#DIST_NAMES[@]}
if [ $# -lt "$DIST_N" ]; then
  echo "usage: bash $0 $DIST_ARGS [tools/$DIST_ENTRY options]" >&2
  exit 2
fi
GPUS=${!DIST_N}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
PYTHON=${PYTHON:-python}

exec "$PYTHON" -m torch.distributed.run \
  --nnodes="$NNODES" --node_rank="$NODE_RANK" --master_addr="$MASTER_ADDR" --master_port="$PORT" \
  --nproc_per_node="$GPUS" \
  "$(dirname "$0")/$DIST_ENTRY" "${@:1:$((DIST_N - 1))}" --launcher pytorch "${@:$((DIST_N + 1))}"
