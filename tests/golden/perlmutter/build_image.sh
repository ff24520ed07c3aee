#!/bin/bash
# crossfl image build for perlmutter, run with bash on the login node by `crossfl deploy`
# (container.image_source.method: build); the header above is unused there.
# Run: bash build_image.sh   (image definition: $HOME/.crossfl/perlmutter/build/oci/build/images/crossfl-cuda.Containerfile)
set -euo pipefail

# The Containerfile and its context (build/images/ from `make image-containerfile`) were
# unpacked in $HOME/.crossfl/perlmutter/build/oci: the build's whole context, its COPY paths relative to it.
cd "$HOME/.crossfl/perlmutter/build/oci"
name=crossfl-cuda
image="${1:?usage: build_image.sh $name:TAG (crossfl deploy gives its build key)}"
podman-hpc build -f build/images/crossfl-cuda.Containerfile -t "$image" .
# squashed into $SCRATCH/storage, where the compute nodes find it
podman-hpc migrate "$image"
podman-hpc image inspect "$image"
