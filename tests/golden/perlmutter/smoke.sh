#!/bin/bash
#SBATCH -J crossfl-smoke-perlmutter
#SBATCH -N 1
#SBATCH --ntasks-per-node=4
#SBATCH -t 00:10:00
#SBATCH -o crossfl-smoke-perlmutter-%j.out
#SBATCH -A m0000_g
#SBATCH -q regular
#SBATCH -C gpu
#SBATCH --gpus-per-node=4
# crossfl smoke test for perlmutter: start the image on a compute node and print, per rank,
# what torch sees. Submit: sbatch smoke.sh
set -euo pipefail

# Facility setup: modules, proxy, environment (from deploy/sites/perlmutter.yaml)
export FI_MR_CACHE_MONITOR=userfaultfd
export NCCL_NET_GDR_LEVEL=PHB
export NCCL_SOCKET_IFNAME=hsn
export APPTAINERENV_HF_HUB_OFFLINE=1

echo "crossfl smoke test on $(hostname) at $(date -u +%FT%TZ)"
srun --nodes=1 --ntasks-per-node=4 --gpus-per-task=1 --gpu-bind=closest -c32 --cpu-bind=cores apptainer exec --nv -B /pscratch -B /global/cfs "$HOME/.crossfl/perlmutter/images/crossfl-cuda.sif" python -c 'import json; from crossfl.client.device import describe_devices; print(json.dumps(describe_devices()))'
