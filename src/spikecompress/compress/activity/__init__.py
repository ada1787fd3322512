"""Activity regularisation: differentiable penalties on the spikes a network emits (fewer spikes,
fewer synaptic operations). ``penalty.py`` holds the spike-rate term and the hooks that collect the
spikes of every neuron during the forward; ADMM pruning and the firing-rate-reduction family use it.
"""
