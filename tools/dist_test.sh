#!/usr/bin/env bash
# Distributed evaluation with torchrun and mmengine's pytorch launcher.
#   bash tools/dist_test.sh CONFIG CHECKPOINT GPUS [tools/test.py options]
# Several nodes: run it on each with NNODES, NODE_RANK (0..NNODES-1), MASTER_ADDR (node 0's address) and PORT set.
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: bash $0 CONFIG CHECKPOINT GPUS [tools/test.py options]" >&2
  exit 2
fi
CONFIG=$1
CHECKPOINT=$2
GPUS=$3
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
PYTHON=${PYTHON:-python}

exec "$PYTHON" -m torch.distributed.run \
  --nnodes="$NNODES" --node_rank="$NODE_RANK" --master_addr="$MASTER_ADDR" --master_port="$PORT" \
  --nproc_per_node="$GPUS" \
  "$(dirname "$0")/test.py" "$CONFIG" "$CHECKPOINT" --launcher pytorch "${@:4}"
