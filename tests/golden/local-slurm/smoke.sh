#!/bin/bash
#SBATCH -J crossfl-smoke-local-slurm
#SBATCH -N 1
#SBATCH --ntasks-per-node=4
#SBATCH -t 00:10:00
#SBATCH -o crossfl-smoke-local-slurm-%j.out
#SBATCH -A crossfl
#SBATCH -p debug
#SBATCH --gpus-per-node=4
# crossfl smoke test for local-slurm: start the image on a compute node and print, per rank,
# what torch sees. Submit: sbatch smoke.sh
set -euo pipefail

# Facility setup: modules, proxy, environment (from deploy/sites/local-slurm.yaml)
# shellcheck source=/dev/null
source <project_root>/.venv/bin/activate

echo "crossfl smoke test on $(hostname) at $(date -u +%FT%TZ)"
srun --nodes=1 --ntasks-per-node=4 --gpus-per-task=1 --gpu-bind=closest python -c 'import json; from crossfl.client.device import describe_devices; print(json.dumps(describe_devices()))'
