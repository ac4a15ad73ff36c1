"""Evaluation of the pCR bundles: train/validation/test and nested cross-validation drivers."""
