"""METHODS: the one literal table of registered compression methods (name → class).

Adding a method touches two places: its own file and this table; the contract test picks it up.
"""

from spikecompress.compress.prune.magnitude import MagnitudePruning

METHODS = {
    "magnitude": MagnitudePruning,
}
