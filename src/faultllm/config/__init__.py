"""What every config key is (schema) and how a Hydra composition becomes that typed config (load)."""
