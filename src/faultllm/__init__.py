"""faultllm: can a 4-bit QLoRA-fine-tuned LLM diagnose faults from tabular sensor rows?"""

__version__ = "0.1.0"
