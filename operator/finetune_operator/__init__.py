"""finetune_operator: the kopf controller that runs FineTuneJob resources.

It never imports torch, transformers, peft, deepspeed or bitsandbytes; from the runtime
only `finetune_runtime.config`, `.contract`, `.errors` and `.progress.document`
(pyproject.toml [tool.importlinter] checks it).
"""

__version__ = "0.1.0"
