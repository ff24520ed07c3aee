#!/bin/bash
#SBATCH -J crossfl-client-local-slurm
#SBATCH -N 1
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=8
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
srun --nodes=1 --ntasks=1 --ntasks-per-node=1 --cpus-per-task=8 bash -c 'bind_rank "$@"' bind_rank python -m crossfl.client run-task "$task" "$out"
test -s "$out"
echo "crossfl client result: $out"
