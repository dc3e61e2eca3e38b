"""Plain-PyTorch reference implementation of ESM and ESMFold: readable, and the spec."""
