# make gpu-check: one prepared check for a machine with NVIDIA GPUs (benchmarks/gpu_check.py):
# device selection, one LoRA round of the tiny model on the GPU, and with 2+ GPUs an NCCL
# all-reduce and a DDP step over all of them, with steps/s, all-reduce GB/s and device-busy.
# Under 5 minutes; nothing downloaded beyond the pinned packages. Without a GPU it runs its
# CPU fallback (gloo). GPU_CHECK_FLAGS=--cpu forces that.
.PHONY: gpu-check

gpu-check: setup
	$(BIN)/python -m benchmarks.gpu_check $(GPU_CHECK_FLAGS)
