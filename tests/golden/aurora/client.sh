#!/bin/bash -l
#PBS -N crossfl-client-aurora
#PBS -l select=1
#PBS -l walltime=01:00:00
#PBS -j oe
#PBS -A TestProject
#PBS -q debug
#PBS -l filesystems=home:flare
#PBS -k doe
#PBS -l place=scatter
# crossfl direct client job for aurora: run one client round from a task file, without an
# endpoint. Submit: qsub client.sh TASK.json RESULT.json
set -euo pipefail
cd "${PBS_O_WORKDIR:-.}"

# Facility setup: modules, proxy, environment (from deploy/sites/aurora.yaml)
module load apptainer
export http_proxy=http://proxy.alcf.anl.gov:3128
export HTTP_PROXY=http://proxy.alcf.anl.gov:3128
export https_proxy=http://proxy.alcf.anl.gov:3128
export HTTPS_PROXY=http://proxy.alcf.anl.gov:3128
export no_proxy='admin,*.hostmgmt.cm.aurora.alcf.anl.gov,*.alcf.anl.gov,localhost'
export NO_PROXY='admin,*.hostmgmt.cm.aurora.alcf.anl.gov,*.alcf.anl.gov,localhost'
export TMPDIR=/tmp
export ZE_FLAT_DEVICE_HIERARCHY=FLAT
export APPTAINERENV_ONEAPI_DEVICE_SELECTOR=level_zero:gpu
export APPTAINERENV_SYCL_DEVICE_FILTER=level_zero:gpu
export APPTAINERENV_CCL_ATL_TRANSPORT=ofi
export APPTAINERENV_CCL_ZE_IPC=0
export APPTAINERENV_CCL_ZE_IPC_EXCHANGE=sockets
export APPTAINERENV_FI_PROVIDER=tcp
export APPTAINERENV_I_MPI_PMI_LIBRARY=/hostlib64/libpmix.so.2
export APPTAINERENV_HF_HUB_OFFLINE=1
export APPTAINERENV_ZE_FLAT_DEVICE_HIERARCHY=FLAT

# Rank i gets what Parsl's worker pool gives worker i: device i of the site's ids, in the same
# variables (its CPUs come from the launcher's binding, the workers' cpu_affinity).
bind_rank() {
  devices=(0 1 2 3 4 5 6 7 8 9 10 11)
  rank=${PALS_LOCAL_RANKID:-0}
  device="${devices[$(( rank % 12 ))]}"
  export CROSSFL_LOCAL_RANK="$rank" CUDA_VISIBLE_DEVICES="$device" ROCR_VISIBLE_DEVICES="$device" ZE_AFFINITY_MASK="$device" ZE_ENABLE_PCI_ID_DEVICE_ORDER=1
  exec "$@"
}
export -f bind_rank

task="$(realpath "${1:?usage: client.sh TASK.json RESULT.json}")"
out="$(realpath -m "${2:?usage: client.sh TASK.json RESULT.json}")"
# shellcheck disable=SC2016  # "$@" belongs to the rank's own bash
mpiexec -n 1 --ppn 1 --cpu-bind list:1-8,105-112 bash -c 'bind_rank "$@"' bind_rank apptainer exec --fakeroot -B /lus/flare -B /usr/lib64:/hostlib64 "/lus/flare/projects/TestProject/$USER/crossfl/images/crossfl-xpu.sif" python -m crossfl.client run-task "$task" "$out"
test -s "$out"
echo "crossfl client result: $out"
