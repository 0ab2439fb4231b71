"""Launch a plan: emitters (torchrun, SLURM, Megatron-LM, torchtitan, pipeline CSV)
and the torch runtime (``launch.runtime``). Torch is imported only by the runtime."""
