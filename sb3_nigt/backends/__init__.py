"""The backends: the contract, the lazy registry, the remote driver and its transports."""
