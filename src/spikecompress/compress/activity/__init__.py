"""Activity regularisation: differentiable penalties on the spikes a network emits (fewer spikes,
fewer synaptic operations). ``penalty.py`` holds the spike-rate term, its options (layer weights,
fan-outs, a target hinge) and the hooks that collect the spikes of every neuron during the
forward; ``activity.py`` is the registered ``activity`` method (``ActivityPenalty``, Deng et al.);
ADMM pruning's ``activity`` knob calls the same function.
"""
