"""bitsandbytes quantization of the base model: 4-bit (nf4/fp4, double quantization,
a chosen block size) and 8-bit, as `quantization` in the config asks."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch

from finetune_runtime.errors import ModelError

if TYPE_CHECKING:
    from finetune_runtime.config import QuantizationSettings

COMPUTE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
BNB_DEFAULT_BLOCKSIZE = 64  # what bitsandbytes' Linear4bit uses when nobody says otherwise


def compute_dtype(quant: QuantizationSettings, default: torch.dtype) -> torch.dtype:
    """The configured compute dtype, or `default` (the training precision's) for auto."""
    if quant.compute_dtype != "auto":
        return COMPUTE_DTYPES[quant.compute_dtype]
    return default


def bnb_config(quant: QuantizationSettings, default_dtype: torch.dtype) -> Any:
    """`quantization` → transformers' BitsAndBytesConfig (block_size is applied separately)."""
    from transformers import BitsAndBytesConfig

    if quant.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quant.type,
        bnb_4bit_use_double_quant=quant.double_quant,
        bnb_4bit_compute_dtype=compute_dtype(quant, default_dtype),
    )


def loading_kwargs(
    quant: QuantizationSettings | None, default_dtype: torch.dtype, device: torch.device
) -> dict[str, Any]:
    """What `from_pretrained` needs to load quantized (nothing when `quant` is None)."""
    if quant is None:
        return {}
    return {"quantization_config": bnb_config(quant, default_dtype), "device_map": {"": device}}


def block_size(quant: QuantizationSettings | None) -> int:
    """The 4-bit block size to quantize with (bitsandbytes' default otherwise)."""
    return quant.block_size if quant is not None and quant.bits == 4 else BNB_DEFAULT_BLOCKSIZE


@contextlib.contextmanager
def bnb_4bit_blocksize(blocksize: int) -> Iterator[None]:
    """Quantize 4-bit weights with `blocksize` while a model loads.

    BitsAndBytesConfig has no block size; transformers builds each Params4bit
    from the placeholder Linear4bit's weight attributes (`blocksize` among
    them, default 64), so setting it on the placeholders is honoured when the
    real weights are quantized. `check_blocksize` verifies the outcome.
    """
    import bitsandbytes as bnb

    if blocksize == BNB_DEFAULT_BLOCKSIZE:
        yield
        return
    original = bnb.nn.Linear4bit.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        self.weight.blocksize = blocksize

    bnb.nn.Linear4bit.__init__ = init  # type: ignore[method-assign]
    try:
        yield
    finally:
        bnb.nn.Linear4bit.__init__ = original  # type: ignore[method-assign]


def check_blocksize(model: torch.nn.Module, blocksize: int) -> None:
    import bitsandbytes as bnb

    for name, module in model.named_modules():
        if not isinstance(module, bnb.nn.Linear4bit):
            continue
        state = getattr(module.weight, "quant_state", None)
        if state is None or state.blocksize != blocksize:
            got = None if state is None else state.blocksize
            raise ModelError(
                f"quantization.block_size={blocksize} was not applied to {name} (got {got}); "
                "this bitsandbytes/transformers combination ignores it: use block_size 64"
            )
        if module.in_features % blocksize:
            # bitsandbytes' packed CPU inference kernel reshapes absmax per row and needs
            # whole blocks per row; the generic kernel handles any block size.
            module.support_avx512bf16_for_cpu = False
