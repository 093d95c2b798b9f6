"""demo: the seed notes' teaching endpoints on the Sluice core."""
