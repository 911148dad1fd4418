"""Reports regenerated from run records only."""
