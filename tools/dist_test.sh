#!/usr/bin/env bash
# Distributed evaluation with torchrun and mmengine's pytorch launcher.
#   bash tools/dist_test.sh CONFIG CHECKPOINT GPUS [tools/test.py options]
# Several nodes: run it on each with NNODES, NODE_RANK (0..NNODES-1), MASTER_ADDR (node 0's address) and PORT set.
DIST_ENTRY=test.py
DIST_ARGS="CONFIG CHECKPOINT GPUS"
source "$(dirname "$0")/dist_launch.sh"
