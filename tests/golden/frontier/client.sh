#!/bin/bash
#SBATCH -J crossfl-client-frontier
#SBATCH -N 1
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=56
#SBATCH -t 01:00:00
#SBATCH -o crossfl-client-frontier-%j.out
#SBATCH -A ABC123
#SBATCH -p batch
#SBATCH -q normal
#SBATCH --gpus-per-node=8
# crossfl direct client job for frontier: run one client round from a task file, without an
# endpoint. Submit: sbatch client.sh TASK.json RESULT.json
set -euo pipefail

# Facility setup: modules, proxy, environment (from deploy/sites/frontier.yaml)
module load olcf-container-tools
module load apptainer-enable-mpi
module load apptainer-enable-gpu
export http_proxy=http://proxy.ccs.ornl.gov:3128/
export HTTP_PROXY=http://proxy.ccs.ornl.gov:3128/
export https_proxy=http://proxy.ccs.ornl.gov:3128/
export HTTPS_PROXY=http://proxy.ccs.ornl.gov:3128/
export no_proxy='localhost,127.0.0.0/8,*.ccs.ornl.gov'
export NO_PROXY='localhost,127.0.0.0/8,*.ccs.ornl.gov'
export MIOPEN_USER_DB_PATH=/tmp/crossfl-miopen-cache
export MIOPEN_CUSTOM_CACHE_DIR=/tmp/crossfl-miopen-cache
export NCCL_SOCKET_IFNAME=hsn0,hsn1,hsn2,hsn3
export NCCL_CROSS_NIC=1
export NCCL_NET_GDR_LEVEL=PHB
export APPTAINERENV_HF_HUB_OFFLINE=1
mkdir -p /tmp/crossfl-miopen-cache

task="$(realpath "${1:?usage: client.sh TASK.json RESULT.json}")"
out="$(realpath -m "${2:?usage: client.sh TASK.json RESULT.json}")"
srun --nodes=1 --ntasks=1 --ntasks-per-node=1 --cpus-per-task=56 --gpus-per-task=1 --gpu-bind=closest apptainer exec --rocm -B /lustre/orion "/lustre/orion/abc123/scratch/$USER/crossfl/images/crossfl-rocm.sif" python -m crossfl.client run-task "$task" "$out"
test -s "$out"
echo "crossfl client result: $out"
