#!/bin/bash
#SBATCH -J crossfl-client-local-slurm
#SBATCH -N 1
#SBATCH --ntasks-per-node=1
#SBATCH -t 00:10:00
#SBATCH -o crossfl-client-local-slurm-%j.out
#SBATCH -A crossfl
#SBATCH -p debug
#SBATCH --gpus-per-node=4
# crossfl direct client job for local-slurm: run one client round from a task file, without an
# endpoint. Submit: sbatch client.sh TASK.json RESULT.json
set -euo pipefail

# Facility setup: modules, proxy, environment (from deploy/sites/local-slurm.yaml)
# shellcheck source=/dev/null
source <project_root>/.venv/bin/activate

task="$(realpath "${1:?usage: client.sh TASK.json RESULT.json}")"
out="$(realpath -m "${2:?usage: client.sh TASK.json RESULT.json}")"
srun --nodes=1 --ntasks-per-node=1 --gpus-per-task=1 --gpu-bind=closest python -m crossfl.client run-task "$task" "$out"
test -s "$out"
echo "crossfl client result: $out"
