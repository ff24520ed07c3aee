#!/bin/bash
#SBATCH -J crossfl-build-perlmutter
#SBATCH -N 1
#SBATCH -t 01:00:00
#SBATCH -o crossfl-build-perlmutter-%j.out
#SBATCH -A m0000_g
#SBATCH -q regular
#SBATCH -C gpu
#SBATCH --gpus-per-node=4
# crossfl image build for perlmutter, run with bash on the login node by `crossfl deploy`
# (container.image_source.method: build); the header above is unused there.
# Run: bash build_image.sh   (image definition: $HOME/.crossfl/perlmutter/build/images/crossfl-cuda.def)
set -euo pipefail

# The def file and the context it stages (build/images/ from `make image-def`) were copied to
# $HOME/.crossfl/perlmutter/build/images/; its %files paths are relative to $HOME/.crossfl/perlmutter.
cd "$HOME/.crossfl/perlmutter"
def="build/images/crossfl-cuda.def"
image="$HOME/.crossfl/perlmutter/images/crossfl-cuda.sif"
mkdir -p "$(dirname "$image")"
apptainer build --fakeroot "$image.tmp" "$def"
mv "$image.tmp" "$image"
apptainer inspect --labels "$image"
