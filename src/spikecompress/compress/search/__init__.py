"""Architecture search: AutoSNN's spike-aware search space, super-network and evolution."""
