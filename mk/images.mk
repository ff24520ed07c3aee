# Worker images (containers/, src/crossfl/images/). ARCH: cpu (default), cpu-debian, cuda, rocm, xpu.
#   make image-def ARCH=rocm            render build/images/crossfl-rocm.def (no Apptainer needed)
#   make image-containerfile ARCH=cuda  render build/images/crossfl-cuda.Containerfile (podman-hpc)
#   make image ARCH=rocm                apptainer build -> build/images/crossfl-rocm.sif + manifest
#   make image-sign ARCH=rocm           apptainer sign it
#   make image-check                    build the cpu-debian rootfs here (mmdebstrap, bubblewrap)
#                                       and run a federation whose workers start inside it
#                                       (testkit/image_check.py: test scaffolding, not the product)
ARCH ?= cpu

.PHONY: image-def image-containerfile image image-sign image-check

image-def: setup
	@$(CROSSFL) image def $(ARCH)

image-containerfile: setup
	@$(CROSSFL) image containerfile $(ARCH)

image: setup
	@$(CROSSFL) image build $(ARCH)

image-sign: setup
	@$(CROSSFL) image sign $(ARCH)

image-check: setup data model
	CROSSFL_IMAGE_CHECK=1 $(BIN)/python -m pytest -q -s tests/test_images.py -k image_check_builds
