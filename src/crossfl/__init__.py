"""crossfl: federated LoRA fine-tuning of LLMs across HPC facilities."""

__version__ = "0.1.0"
