"""Sluice core: the one streaming runtime every Sluice service is built on."""
