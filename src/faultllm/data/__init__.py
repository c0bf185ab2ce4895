"""Tables in, leakage-safe splits out: loaders for each data set, sampling, run-grouped folds, scaling."""
