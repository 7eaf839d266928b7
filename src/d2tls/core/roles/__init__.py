"""The D2TLS roles as sans-IO protocols: the device, the agent and the device's signer."""
