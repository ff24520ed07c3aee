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

# Rank i gets what Parsl's worker pool gives worker i: device i of the site's ids, in the same
# variables (its CPUs come from the launcher's binding, the workers' cpu_affinity).
bind_rank() {
  devices=(0 1 2 3)
  rank=${SLURM_LOCALID:-0}
  device="${devices[$(( rank % 4 ))]}"
  export CROSSFL_LOCAL_RANK="$rank" CUDA_VISIBLE_DEVICES="$device" ROCR_VISIBLE_DEVICES="$device" ZE_AFFINITY_MASK="$device" ZE_ENABLE_PCI_ID_DEVICE_ORDER=1
  exec "$@"
}
export -f bind_rank

echo "crossfl smoke test on $(hostname) at $(date -u +%FT%TZ)"
# shellcheck disable=SC2016  # "$@" belongs to the rank's own bash
srun --nodes=1 --ntasks-per-node=4 --cpus-per-task=32 --cpu-bind=mask_cpu:0xffff000000000000ffff000000000000,0xffff000000000000ffff00000000,0xffff000000000000ffff0000,0xffff000000000000ffff bash -c 'bind_rank "$@"' bind_rank podman-hpc run --rm --gpu -v /pscratch:/pscratch -v /global/cfs:/global/cfs -e FI_MR_CACHE_MONITOR=userfaultfd -e NCCL_NET_GDR_LEVEL=PHB -e NCCL_SOCKET_IFNAME=hsn -e HF_HUB_OFFLINE=1 -e CUDA_VISIBLE_DEVICES -e ROCR_VISIBLE_DEVICES -e ZE_AFFINITY_MASK -e ZE_ENABLE_PCI_ID_DEVICE_ORDER -e CROSSFL_LOCAL_RANK -v "$PWD:$PWD" -w "$PWD" crossfl-cuda:latest python -m crossfl.client devices --expect cuda
