"""What every config key is, and how Hydra's composition becomes that typed config.

Hydra composes the YAML files under configs/ (the study's protocols and presets) onto the dataclasses
here (`groups`, `hpo`: one per config group; `jobs`: one per command; registered as structured configs
in `load`), so a key that does not exist or a value of the wrong type is refused while composing.
Choices, ranges and rules between keys are checked when the composed config becomes these objects
(`__post_init__`, with the `fields` helpers), before any work: a `ConfigError` names the key, the value
and what was expected. The library receives these objects (or plain values), never Hydra's untyped
config tree. `help` renders `faultllm COMMAND --help` from them; `overrides` reads the command line.
"""
