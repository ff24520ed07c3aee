#!/bin/bash
#SBATCH -J crossfl-smoke-frontier
#SBATCH -N 1
#SBATCH --ntasks-per-node=8
#SBATCH -t 00:10:00
#SBATCH -o crossfl-smoke-frontier-%j.out
#SBATCH -A ABC123
#SBATCH -p batch
#SBATCH -q debug
#SBATCH --gpus-per-node=8
# crossfl smoke test for frontier: start the image on a compute node and print, per rank,
# what torch sees. Submit: sbatch smoke.sh
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

echo "crossfl smoke test on $(hostname) at $(date -u +%FT%TZ)"
srun --nodes=1 --ntasks-per-node=8 --gpus-per-task=1 --gpu-bind=closest -c7 apptainer exec --rocm -B /lustre/orion "$HOME/.crossfl/frontier/images/crossfl-rocm.sif" python -c 'import json; from crossfl.client.device import describe_devices; print(json.dumps(describe_devices()))'
