#!/usr/bin/env bash
# Distributed training with torchrun and mmengine's pytorch launcher.
#   bash tools/dist_train.sh CONFIG GPUS [tools/train.py options]
# Several nodes: run it on each with NNODES, NODE_RANK (0..NNODES-1), MASTER_ADDR (node 0's address) and PORT set.
DIST_ENTRY=train.py
DIST_ARGS="CONFIG GPUS"
source "$(dirname "$0")/dist_launch.sh"
