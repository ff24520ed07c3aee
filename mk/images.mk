# Worker images (containers/, src/crossfl/images.py). ARCH: cpu (default), cuda, rocm, xpu.
#   make image-def ARCH=rocm   render build/images/crossfl-rocm.def (no Apptainer needed)
#   make image ARCH=rocm       apptainer build -> build/images/crossfl-rocm.sif + manifest.json
#   make image-sign ARCH=rocm  apptainer sign it
#   make image-check           run the cpu image's %post/%test/%runscript here in a throwaway venv
ARCH ?= cpu

.PHONY: image-def image image-sign image-check

image-def: setup
	@$(CROSSFL) image def $(ARCH)

image: setup
	@$(CROSSFL) image build $(ARCH)

image-sign: setup
	@$(CROSSFL) image sign $(ARCH)

image-check: setup
	CROSSFL_IMAGE_CHECK=1 $(BIN)/python -m pytest -q -s tests/test_images.py -k cpu_image_build_steps
