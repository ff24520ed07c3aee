#!/bin/bash
#SBATCH -J crossfl-client-frontier
#SBATCH -N 1
#SBATCH --ntasks-per-node=1
#SBATCH -t 01:00:00
#SBATCH -o crossfl-client-frontier-%j.out
#SBATCH -A ABC123
#SBATCH -p batch
#SBATCH -q debug
#SBATCH --gpus-per-node=8
# crossfl direct client job for frontier: run one client round from a task file, without an
# endpoint. Submit: sbatch client.sh TASK.json RESULT.json
set -euo pipefail

# Facility setup: modules, proxy, environment (from deploy/sites/frontier.yaml)
module load olcf-container-tools
module load apptainer-enable-mpi
module load apptainer-enable-gpu
export MIOPEN_USER_DB_PATH=/tmp/crossfl-miopen-cache
export NCCL_SOCKET_IFNAME=hsn0
export NCCL_CROSS_NIC=1
export NCCL_NET_GDR_LEVEL=3
export APPTAINERENV_MIOPEN_USER_DB_PATH=/tmp/crossfl-miopen-cache
export APPTAINERENV_HF_HUB_OFFLINE=1

task="$(realpath "${1:?usage: client.sh TASK.json RESULT.json}")"
out="$(realpath -m "${2:?usage: client.sh TASK.json RESULT.json}")"
srun --nodes=1 --ntasks-per-node=1 --gpus-per-task=1 --gpu-bind=closest -c7 apptainer exec --rocm -B /lustre/orion "$HOME/.crossfl/frontier/images/crossfl-rocm.sif" python -m crossfl.client run-task "$task" "$out"
test -s "$out"
echo "crossfl client result: $out"
