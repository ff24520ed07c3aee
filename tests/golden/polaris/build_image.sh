#!/bin/bash -l
#PBS -N crossfl-build-polaris
#PBS -l select=1:system=polaris
#PBS -l walltime=01:00:00
#PBS -j oe
#PBS -A TestProject
#PBS -l filesystems=home:eagle
#PBS -l place=scatter
#PBS -l singularity_fakeroot=true
#PBS -q debug
# crossfl image build for polaris: the facility builds images on a compute node (fakeroot
# needs the node's user namespace; the proxy reaches the registries).
# Submit: qsub build_image.sh   (image definition: /eagle/TestProject/$USER/crossfl/build/images/crossfl-cuda.def)
set -euo pipefail
cd "${PBS_O_WORKDIR:-.}"
module use /soft/modulefiles
module load spack-pe-base
module load apptainer
export http_proxy=http://proxy.alcf.anl.gov:3128
export HTTP_PROXY=http://proxy.alcf.anl.gov:3128
export https_proxy=http://proxy.alcf.anl.gov:3128
export HTTPS_PROXY=http://proxy.alcf.anl.gov:3128
export no_proxy='admin,polaris-adminvm-01,localhost,*.cm.polaris.alcf.anl.gov,polaris-*,*.polaris.alcf.anl.gov,*.alcf.anl.gov'
export NO_PROXY='admin,polaris-adminvm-01,localhost,*.cm.polaris.alcf.anl.gov,polaris-*,*.polaris.alcf.anl.gov,*.alcf.anl.gov'
export APPTAINER_TMPDIR=/local/scratch/apptainer-tmpdir
export APPTAINER_CACHEDIR=/local/scratch/apptainer-cachedir
mkdir -p "$APPTAINER_TMPDIR"
mkdir -p "$APPTAINER_CACHEDIR"

# The def file and the context it stages (build/images/ from `make image-def`) were copied to
# /eagle/TestProject/$USER/crossfl/build/images/; its %files paths are relative to /eagle/TestProject/$USER/crossfl.
cd "/eagle/TestProject/$USER/crossfl"
def=build/images/crossfl-cuda.def
image="/eagle/TestProject/$USER/crossfl/images/crossfl-cuda.sif"
mkdir -p "$(dirname "$image")"
# %post does not see this environment: the proxies go in as build arguments.
apptainer build --fakeroot \
  --build-arg "HTTP_PROXY=$HTTP_PROXY" \
  --build-arg "HTTPS_PROXY=$HTTPS_PROXY" \
  --build-arg "NO_PROXY=$NO_PROXY" \
  "$image.tmp" "$def"
mv "$image.tmp" "$image"
apptainer inspect --labels "$image"
