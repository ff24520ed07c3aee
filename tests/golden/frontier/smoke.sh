#!/bin/bash
#SBATCH -J crossfl-smoke-frontier
#SBATCH -N 2
#SBATCH --ntasks-per-node=8
#SBATCH --cpus-per-task=7
#SBATCH -t 00:10:00
#SBATCH -o crossfl-smoke-frontier-%j.out
#SBATCH -A ABC123
#SBATCH -p batch
#SBATCH -q normal
#SBATCH --gpus-per-node=8
# crossfl smoke test for frontier: start the image on a compute node and print, per rank,
# what torch sees; then 2 ranks on each of 2 node(s) all-reduce and take one DDP
# step with the site's backend. Submit: sbatch smoke.sh
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

echo "crossfl smoke test on $(hostname) at $(date -u +%FT%TZ)"
srun --nodes=1 --ntasks=8 --ntasks-per-node=8 --cpus-per-task=7 --gpus-per-task=1 --gpu-bind=closest apptainer exec --rocm -B /lustre/orion "/lustre/orion/abc123/scratch/$USER/crossfl/images/crossfl-rocm.sif" python -m crossfl.client devices --expect rocm
# the collective: one JSON line per rank (its all-reduce and DDP step, backend, bandwidth)
srun --nodes=2 --ntasks=4 --ntasks-per-node=2 --cpus-per-task=28 --gpus-per-task=1 --gpu-bind=closest apptainer exec --rocm -B /lustre/orion "/lustre/orion/abc123/scratch/$USER/crossfl/images/crossfl-rocm.sif" python -m crossfl.client collective --expect rocm --mb 64
