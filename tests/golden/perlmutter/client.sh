#!/bin/bash
#SBATCH -J crossfl-client-perlmutter
#SBATCH -N 1
#SBATCH --ntasks-per-node=1
#SBATCH -t 01:00:00
#SBATCH -o crossfl-client-perlmutter-%j.out
#SBATCH -A m0000_g
#SBATCH -q regular
#SBATCH -C gpu
#SBATCH --gpus-per-node=4
# crossfl direct client job for perlmutter: run one client round from a task file, without an
# endpoint. Submit: sbatch client.sh TASK.json RESULT.json
set -euo pipefail

# Facility setup: modules, proxy, environment (from deploy/sites/perlmutter.yaml)
export FI_MR_CACHE_MONITOR=userfaultfd
export NCCL_NET_GDR_LEVEL=PHB
export NCCL_SOCKET_IFNAME=hsn
export APPTAINERENV_HF_HUB_OFFLINE=1

task="$(realpath "${1:?usage: client.sh TASK.json RESULT.json}")"
out="$(realpath -m "${2:?usage: client.sh TASK.json RESULT.json}")"
srun --nodes=1 --ntasks-per-node=1 --gpus-per-task=1 --gpu-bind=closest -c32 --cpu-bind=cores apptainer exec --nv -B /pscratch -B /global/cfs "$HOME/.crossfl/perlmutter/images/crossfl-cuda.sif" python -m crossfl.client run-task "$task" "$out"
test -s "$out"
echo "crossfl client result: $out"
