"""Objectives: the ELBO, IWAE/SIWAE and pathwise bounds as plain functions of the model's
distributions, the importance-sampled log-likelihood, and the mixture's component usage."""
