"""DeepSpeed universal checkpoints of the original Lucie-7B run (Megatron-DeepSpeed, ``ds_to_universal``).

``checkpoint`` reads one (tensors in Megatron's layout, the run's args), ``facts`` checks the run's facts against
a phase, ``import_weights`` writes its weights as a weights-only checkpoint, ``import_state`` the whole training
state (weights, Adam, scheduler) as the Megatron-Bridge checkpoint of its iteration, and ``export`` writes it as
a Hugging Face folder.
"""
