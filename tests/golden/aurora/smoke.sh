#!/bin/bash -l
#PBS -N crossfl-smoke-aurora
#PBS -l select=2
#PBS -l walltime=00:10:00
#PBS -j oe
#PBS -A TestProject
#PBS -q debug
#PBS -l filesystems=home:flare
#PBS -k doe
#PBS -l place=scatter
# crossfl smoke test for aurora: start the image on a compute node and print, per rank,
# what torch sees; then 2 ranks on each of 2 node(s) all-reduce and take one DDP
# step with the site's backend. Submit: qsub smoke.sh
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

echo "crossfl smoke test on $(hostname) at $(date -u +%FT%TZ)"
# shellcheck disable=SC2016  # "$@" belongs to the rank's own bash
mpiexec -n 12 --ppn 12 --cpu-bind list:1-8,105-112:9-16,113-120:17-24,121-128:25-32,129-136:33-40,137-144:41-48,145-152:53-60,157-164:61-68,165-172:69-76,173-180:77-84,181-188:85-92,189-196:93-100,197-204 bash -c 'bind_rank "$@"' bind_rank apptainer exec --fakeroot -B /lus/flare -B /usr/lib64:/hostlib64 "/lus/flare/projects/TestProject/$USER/crossfl/images/crossfl-xpu.sif" python -m crossfl.client devices --expect xpu
# the collective: one JSON line per rank (its all-reduce and DDP step, backend, bandwidth)
# shellcheck disable=SC2016  # "$@" belongs to the rank's own bash
mpiexec -n 4 --ppn 2 --cpu-bind list:1-8,105-112:9-16,113-120 bash -c 'bind_rank "$@"' bind_rank apptainer exec --fakeroot -B /lus/flare -B /usr/lib64:/hostlib64 "/lus/flare/projects/TestProject/$USER/crossfl/images/crossfl-xpu.sif" python -m crossfl.client collective --expect xpu --mb 64
