"""VQ-VAE (van den Oord et al. 2017) and its priors, sharded, trained and tracked on Ray + MLflow."""
