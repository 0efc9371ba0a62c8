"""Evaluation: the importance-sampled test NLL with its per-image file, paired comparisons of
runs, and the quality of samples in a classifier's features."""
