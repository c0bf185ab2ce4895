"""faultllm's `hydra/launcher=slurm` (configs/hydra/launcher/slurm.yaml). Hydra takes launchers only from the
`hydra_plugins` package and imports every module in it at start-up, so this one imports nothing heavy."""

from __future__ import annotations

from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher


class FaultllmSlurmLauncher(SlurmLauncher):
    """Hydra's submitit SLURM launcher, its resources taken from the job config's `slurm` slice."""

    def setup(self, *, hydra_context, task_function, config) -> None:
        from faultllm.run.slurm import launcher_parameters, slurm_config  # also makes submitit watch with squeue

        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        self.params.update(launcher_parameters(slurm_config(config)))
