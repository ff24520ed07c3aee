#!/bin/bash
#SBATCH -J crossfl-smoke-local-slurm
#SBATCH -N 1
#SBATCH --ntasks-per-node=4
#SBATCH --cpus-per-task=2
#SBATCH -t 00:10:00
#SBATCH -o crossfl-smoke-local-slurm-%j.out
#SBATCH -A crossfl
#SBATCH -p debug
#SBATCH --gpus-per-node=4
# crossfl smoke test for local-slurm: start the image on a compute node and print, per rank,
# what torch sees; then 2 ranks on each of 1 node(s) all-reduce and take one DDP
# step with the site's backend. Submit: sbatch smoke.sh
set -euo pipefail

# Facility setup: modules, proxy, environment (from deploy/sites/local-slurm.yaml)
# shellcheck source=/dev/null
source <project_root>/.venv/bin/activate

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
srun --nodes=1 --ntasks=4 --ntasks-per-node=4 --cpus-per-task=2 bash -c 'bind_rank "$@"' bind_rank python -m crossfl.client devices
# the collective: one JSON line per rank (its all-reduce and DDP step, backend, bandwidth)
# shellcheck disable=SC2016  # "$@" belongs to the rank's own bash
srun --nodes=1 --ntasks=2 --ntasks-per-node=2 --cpus-per-task=4 bash -c 'bind_rank "$@"' bind_rank python -m crossfl.client collective --mb 8
