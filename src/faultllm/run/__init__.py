"""Run directories: starting, resuming and reopening a run, the typed records it writes, SLURM launches."""
