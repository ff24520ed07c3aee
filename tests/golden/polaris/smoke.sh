#!/bin/bash -l
#PBS -N crossfl-smoke-polaris
#PBS -l select=2:system=polaris
#PBS -l walltime=00:10:00
#PBS -j oe
#PBS -A TestProject
#PBS -q debug
#PBS -l filesystems=home:eagle
#PBS -l place=scatter
#PBS -l singularity_fakeroot=true
# crossfl smoke test for polaris: start the image on a compute node and print, per rank,
# what torch sees; then 2 ranks on each of 2 node(s) all-reduce and take one DDP
# step with the site's backend. Submit: qsub smoke.sh
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

echo "crossfl smoke test on $(hostname) at $(date -u +%FT%TZ)"
# shellcheck disable=SC2016  # "$@" belongs to the rank's own bash
mpiexec -n 4 --ppn 4 --cpu-bind list:24-31,56-63:16-23,48-55:8-15,40-47:0-7,32-39 bash -c 'bind_rank "$@"' bind_rank apptainer exec --nv --fakeroot -B /opt/cray/pe/pals -B /var/run/palsd/ -B /eagle "/eagle/TestProject/$USER/crossfl/images/crossfl-cuda.sif" python -m crossfl.client devices --expect cuda
# the collective: one JSON line per rank (its all-reduce and DDP step, backend, bandwidth)
# shellcheck disable=SC2016  # "$@" belongs to the rank's own bash
mpiexec -n 4 --ppn 2 --cpu-bind list:24-31,56-63:16-23,48-55 bash -c 'bind_rank "$@"' bind_rank apptainer exec --nv --fakeroot -B /opt/cray/pe/pals -B /var/run/palsd/ -B /eagle "/eagle/TestProject/$USER/crossfl/images/crossfl-cuda.sif" python -m crossfl.client collective --expect cuda --mb 64
