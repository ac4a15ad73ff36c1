"""Federated training of the bundles with NVIDIA FLARE (FedAvg recipe, Client API, MonaiAlgo)."""
