"""finetune_operator: the kopf controller that runs FineTuneJob resources.

It never imports torch, transformers, peft, deepspeed or bitsandbytes; only
`finetune_runtime.config` and `finetune_runtime.progress.document` from the runtime.
"""

__version__ = "0.1.0"
