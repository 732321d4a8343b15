"""finetune_runtime: the in-pod fine-tuning engine behind the `finetune` CLI.

Importing the package itself is cheap: heavy dependencies (torch, transformers,
peft, deepspeed) are imported only by the modules that need them, so
`finetune_runtime.config` and `finetune_runtime.progress.document` work with pydantic and
PyYAML alone (the operator relies on that).
"""

__version__ = "0.1.0"
