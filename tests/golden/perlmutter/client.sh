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

task="$(realpath "${1:?usage: client.sh TASK.json RESULT.json}")"
out="$(realpath -m "${2:?usage: client.sh TASK.json RESULT.json}")"
# shellcheck disable=SC2016  # "$@" belongs to the rank's own bash
srun --nodes=1 --ntasks-per-node=1 --cpus-per-task=32 --cpu-bind=mask_cpu:0xffff000000000000ffff000000000000 bash -c 'bind_rank "$@"' bind_rank podman-hpc run --rm --gpu -v /pscratch:/pscratch -v /global/cfs:/global/cfs -e FI_MR_CACHE_MONITOR=userfaultfd -e NCCL_NET_GDR_LEVEL=PHB -e NCCL_SOCKET_IFNAME=hsn -e HF_HUB_OFFLINE=1 -e CUDA_VISIBLE_DEVICES -e ROCR_VISIBLE_DEVICES -e ZE_AFFINITY_MASK -e ZE_ENABLE_PCI_ID_DEVICE_ORDER -e CROSSFL_LOCAL_RANK -v "$PWD:$PWD" -w "$PWD" crossfl-cuda:latest python -m crossfl.client run-task "$task" "$out"
test -s "$out"
echo "crossfl client result: $out"
