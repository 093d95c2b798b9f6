"""Sluice's development tooling (not in the image): ``make run``'s local stack, the files
generated from the services' declarations, and the ``new-service`` generator.

``python -m sluice_dev --help`` lists its commands.
"""
