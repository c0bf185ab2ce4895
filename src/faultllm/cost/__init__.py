"""What a run costs: FLOPs and GPU datasheets, measured steps (bench), and the plan of a train or hpo run."""
