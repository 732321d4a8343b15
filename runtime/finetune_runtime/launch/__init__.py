"""From the pod's environment to a running gang: `torchrun` (PET_* env → torchrun
arguments, pure) and `rendezvous` (wait until worker 0 answers). `finetune launch`
(commands/launch.py) wires them together."""
