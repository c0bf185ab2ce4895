"""What a run costs: FLOPs and GPU datasheets (flops), measured steps (bench), the plan of a train or hpo run
(cases, protocol, work, plan) and the records plan.json and bench.json are written from (records)."""
