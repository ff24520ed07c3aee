#!/bin/bash
#SBATCH -J crossfl-build-frontier
#SBATCH -N 1
#SBATCH -t 01:00:00
#SBATCH -o crossfl-build-frontier-%j.out
#SBATCH -A ABC123
#SBATCH -q normal
#SBATCH --gpus-per-node=8
#SBATCH -p batch
# crossfl image build for frontier, run with bash on the login node by `crossfl deploy`
# (container.image_source.method: build); the header above is unused there.
# Run: bash build_image.sh   (image definition: /lustre/orion/abc123/scratch/$USER/crossfl/build/images/crossfl-rocm.def)
set -euo pipefail
export http_proxy=http://proxy.ccs.ornl.gov:3128/
export HTTP_PROXY=http://proxy.ccs.ornl.gov:3128/
export https_proxy=http://proxy.ccs.ornl.gov:3128/
export HTTPS_PROXY=http://proxy.ccs.ornl.gov:3128/
export no_proxy='localhost,127.0.0.0/8,*.ccs.ornl.gov'
export NO_PROXY='localhost,127.0.0.0/8,*.ccs.ornl.gov'
export APPTAINER_TMPDIR=/tmp/crossfl-apptainer-tmpdir
export APPTAINER_CACHEDIR=/tmp/crossfl-apptainer-cachedir
mkdir -p "$APPTAINER_TMPDIR"
mkdir -p "$APPTAINER_CACHEDIR"

# The def file and the context it stages (build/images/ from `make image-def`) were copied to
# /lustre/orion/abc123/scratch/$USER/crossfl/build/images/; its %files paths are relative to /lustre/orion/abc123/scratch/$USER/crossfl.
cd "/lustre/orion/abc123/scratch/$USER/crossfl"
def=build/images/crossfl-rocm.def
image="/lustre/orion/abc123/scratch/$USER/crossfl/images/crossfl-rocm.sif"
mkdir -p "$(dirname "$image")"
# %post does not see this environment: the proxies go in as build arguments.
apptainer build --fakeroot \
  --build-arg "HTTP_PROXY=$HTTP_PROXY" \
  --build-arg "HTTPS_PROXY=$HTTPS_PROXY" \
  --build-arg "NO_PROXY=$NO_PROXY" \
  "$image.tmp" "$def"
mv "$image.tmp" "$image"
apptainer inspect --labels "$image"
