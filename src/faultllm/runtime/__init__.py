"""The process faultllm runs in: one error type, paths, atomic files, secrets, progress, thread budget, GPUs."""
