#!/bin/bash
#SBATCH -J crossfl-build-frontier
#SBATCH -N 1
#SBATCH -t 01:00:00
#SBATCH -o crossfl-build-frontier-%j.out
#SBATCH -A ABC123
#SBATCH -q debug
#SBATCH --gpus-per-node=8
#SBATCH -p batch
# crossfl image build for frontier, run with bash on the login node by `crossfl deploy`
# (container.image_source.method: build); the header above is unused there.
# Run: bash build_image.sh   (image definition: $HOME/.crossfl/frontier/build/images/crossfl-rocm.def)
set -euo pipefail

# The def file and the context it stages (build/images/ from `make image-def`) were copied to
# $HOME/.crossfl/frontier/build/images/; its %files paths are relative to $HOME/.crossfl/frontier.
cd "$HOME/.crossfl/frontier"
def="build/images/crossfl-rocm.def"
image="$HOME/.crossfl/frontier/images/crossfl-rocm.sif"
mkdir -p "$(dirname "$image")"
apptainer build --fakeroot "$image.tmp" "$def"
mv "$image.tmp" "$image"
apptainer inspect --labels "$image"
