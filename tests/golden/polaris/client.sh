#!/bin/bash -l
#PBS -N crossfl-client-polaris
#PBS -l select=1:system=polaris
#PBS -l walltime=01:00:00
#PBS -j oe
#PBS -A TestProject
#PBS -q debug
#PBS -l filesystems=home:eagle
#PBS -l place=scatter
#PBS -l singularity_fakeroot=true
# crossfl direct client job for polaris: run one client round from a task file, without an
# endpoint. Submit: qsub client.sh TASK.json RESULT.json
set -euo pipefail
cd "${PBS_O_WORKDIR:-.}"

# Facility setup: modules, proxy, environment (from deploy/sites/polaris.yaml)
module use /soft/modulefiles
module load spack-pe-base
module load apptainer
export http_proxy=http://proxy.alcf.anl.gov:3128
export HTTP_PROXY=http://proxy.alcf.anl.gov:3128
export https_proxy=http://proxy.alcf.anl.gov:3128
export HTTPS_PROXY=http://proxy.alcf.anl.gov:3128
export no_proxy='admin,polaris-adminvm-01,localhost,*.cm.polaris.alcf.anl.gov,polaris-*,*.polaris.alcf.anl.gov,*.alcf.anl.gov'
export NO_PROXY='admin,polaris-adminvm-01,localhost,*.cm.polaris.alcf.anl.gov,polaris-*,*.polaris.alcf.anl.gov,*.alcf.anl.gov'
export TMPDIR=/tmp
export APPTAINERENV_HF_HUB_OFFLINE=1

# Rank i gets what Parsl's worker pool gives worker i: device i of the site's ids, in the same
# variables (its CPUs come from the launcher's binding, the workers' cpu_affinity).
bind_rank() {
  devices=(0 1 2 3)
  rank=${PMI_LOCAL_RANK:-0}
  device="${devices[$(( rank % 4 ))]}"
  export CROSSFL_LOCAL_RANK="$rank" CUDA_VISIBLE_DEVICES="$device" ROCR_VISIBLE_DEVICES="$device" ZE_AFFINITY_MASK="$device" ZE_ENABLE_PCI_ID_DEVICE_ORDER=1
  exec "$@"
}
export -f bind_rank

task="$(realpath "${1:?usage: client.sh TASK.json RESULT.json}")"
out="$(realpath -m "${2:?usage: client.sh TASK.json RESULT.json}")"
# shellcheck disable=SC2016  # "$@" belongs to the rank's own bash
mpiexec -n 1 --ppn 1 --cpu-bind list:24-31,56-63 bash -c 'bind_rank "$@"' bind_rank apptainer exec --nv --fakeroot -B /opt/cray/pe/pals -B /var/run/palsd/ -B /eagle "/eagle/TestProject/$USER/crossfl/images/crossfl-cuda.sif" python -m crossfl.client run-task "$task" "$out"
test -s "$out"
echo "crossfl client result: $out"
