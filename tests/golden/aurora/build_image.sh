#!/bin/bash -l
#PBS -N crossfl-build-aurora
#PBS -l select=1
#PBS -l walltime=02:00:00
#PBS -j oe
#PBS -A TestProject
#PBS -l filesystems=home:flare
#PBS -k doe
#PBS -l place=scatter
#PBS -q capacity
# crossfl image build for aurora: the facility builds images on a compute node (fakeroot
# needs the node's user namespace; the proxy reaches the registries).
# Submit: qsub build_image.sh   (image definition: /lus/flare/projects/TestProject/$USER/crossfl/build/images/crossfl-xpu.def)
set -euo pipefail
cd "${PBS_O_WORKDIR:-.}"
module load apptainer
export http_proxy=http://proxy.alcf.anl.gov:3128
export HTTP_PROXY=http://proxy.alcf.anl.gov:3128
export https_proxy=http://proxy.alcf.anl.gov:3128
export HTTPS_PROXY=http://proxy.alcf.anl.gov:3128
export no_proxy='admin,*.hostmgmt.cm.aurora.alcf.anl.gov,*.alcf.anl.gov,localhost'
export NO_PROXY='admin,*.hostmgmt.cm.aurora.alcf.anl.gov,*.alcf.anl.gov,localhost'
export APPTAINER_TMPDIR=/tmp/crossfl-apptainer-tmpdir
export APPTAINER_CACHEDIR=/tmp/crossfl-apptainer-cachedir
mkdir -p "$APPTAINER_TMPDIR"
mkdir -p "$APPTAINER_CACHEDIR"

# The def file and the context it stages (build/images/ from `make image-def`) were copied to
# /lus/flare/projects/TestProject/$USER/crossfl/build/images/; its %files paths are relative to /lus/flare/projects/TestProject/$USER/crossfl.
cd "/lus/flare/projects/TestProject/$USER/crossfl"
def=build/images/crossfl-xpu.def
image="/lus/flare/projects/TestProject/$USER/crossfl/images/crossfl-xpu.sif"
mkdir -p "$(dirname "$image")"
# %post does not see this environment: the proxies go in as build arguments.
apptainer build --fakeroot \
  --build-arg "HTTP_PROXY=$HTTP_PROXY" \
  --build-arg "HTTPS_PROXY=$HTTPS_PROXY" \
  --build-arg "NO_PROXY=$NO_PROXY" \
  "$image.tmp" "$def"
mv "$image.tmp" "$image"
apptainer inspect --labels "$image"
