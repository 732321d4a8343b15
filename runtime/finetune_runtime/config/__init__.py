"""The training config schema: one place, shared by the CLI, the trainer and the operator.

A config is written either in the canonical nested form (below) or as an
axolotl-style flat config (`lora_r`, `micro_batch_size`, `datasets[].type`, ...),
which `finetune_runtime.config.axolotl` normalises to the canonical form first. Errors
always name the key the user actually wrote and its line.

This module needs only pydantic and PyYAML: the operator imports it to validate
FineTuneJob resources and to generate the CRD schema.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

from finetune_runtime.config.yamlsafe import MAX_CONFIG_BYTES, LineIndex, check_size, load_yaml
from finetune_runtime.errors import ConfigError, ConfigIssue

AdapterType = Literal[
    "none",
    "lora",
    "qlora",
    "dora",
    "loha",
    "lokr",
    "ia3",
    "adalora",
    "oft",
    "vera",
    "boft",
    "prefix_tuning",
    "prompt_tuning",
    "p_tuning",
]
DatasetFormat = Literal["alpaca", "sharegpt", "completion", "custom"]
SchedulerType = Literal[
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
    "cosine_with_min_lr",
    "warmup_stable_decay",
]
OptimizerType = Literal[
    "adamw_torch",
    "adamw_torch_fused",
    "adamw_bnb_8bit",
    "paged_adamw_8bit",
    "paged_adamw_32bit",
    "sgd",
    "adafactor",
]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
Kernels = Literal["auto", "liger", "torch", "none"]
DEEPSPEED_PRESETS = ("zero1", "zero2", "zero3", "zero2_offload", "zero3_offload")
ADAPTERS_USING_LORA_CONFIG = ("lora", "qlora", "dora")
# peft's prompt-learning methods: trained virtual tokens, not weight deltas, so they can be
# served with the base model but never merged into it.
PROMPT_LEARNING_ADAPTERS = ("prefix_tuning", "prompt_tuning", "p_tuning")

PositiveInt = Annotated[int, Field(gt=0)]


class _Section(BaseModel):
    # No NaN/inf in typed fields: `.inf` passes `gt=0` and breaks the step arithmetic later.
    # Free-form dicts (deepspeed, lora.options) keep theirs through to_yaml (as .inf/.nan).
    model_config = ConfigDict(
        extra="forbid", validate_default=True, allow_inf_nan=False, ser_json_inf_nan="constants"
    )


class LoraSettings(_Section):
    """Adapter hyper-parameters. `r`/`alpha`/`dropout` apply to the LoRA family;
    `target_modules` applies to every peft adapter."""

    r: PositiveInt = 8
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | str = Field(
        default_factory=lambda: ["q_proj", "v_proj"],
        description="Module names, a regex, or 'all-linear'.",
    )
    modules_to_save: list[str] | None = None
    use_rslora: bool = False
    fan_in_fan_out: bool = False
    bias: Literal["none", "all", "lora_only"] = "none"
    num_virtual_tokens: PositiveInt = Field(
        20,
        description="prefix_tuning, prompt_tuning, p_tuning: how many trained virtual tokens "
        "are put before every sequence.",
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="Extra keyword arguments passed to the peft adapter config.",
    )

    @field_validator("target_modules")
    @classmethod
    def _non_empty_targets(cls, value: list[str] | str) -> list[str] | str:
        if isinstance(value, str):
            if not value.strip():
                raise ValueError("must name modules, a regex, or 'all-linear'")
        elif not value or any(not m.strip() for m in value):
            raise ValueError("must list at least one module name (or be 'all-linear')")
        return value


class QuantizationSettings(_Section):
    """bitsandbytes quantization of the frozen base model (QLoRA when bits=4)."""

    bits: Literal[4, 8] = 4
    type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True
    block_size: Literal[32, 64, 128, 256, 512, 1024, 2048, 4096] = 64
    compute_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"


class Splits(_Section):
    """How a dataset is split. `validation` is a fraction (<1) or a row count (>=1)."""

    train: float | None = Field(None, gt=0, le=1)
    validation: float = Field(0.0, ge=0)


class DatasetSettings(_Section):
    """One dataset: a local file or folder, an `s3://` object or prefix, or a hub dataset id."""

    path: str = Field(
        description="A local .json/.jsonl/.parquet/.csv/.arrow file or folder, a save_to_disk "
        "folder, an s3:// object or prefix, or a Hugging Face hub dataset id (from the local "
        "cache when HF_HUB_OFFLINE=1)."
    )
    format: DatasetFormat | None = Field(
        None,
        description="alpaca, sharegpt, completion or custom; omitted: detected from the first "
        "row (conversations/messages: sharegpt; text alone: completion; else alpaca).",
    )
    name: str | None = Field(
        None, description="Dataset configuration name (load_dataset's `name`), for hub datasets."
    )
    split: str | None = Field(
        None,
        description="Which split to read from a hub dataset or a DatasetDict folder; "
        "default 'train' (or the only split there is).",
    )
    data_files: str | list[str] | dict[str, str | list[str]] | None = Field(
        None,
        description="Files inside a hub dataset or a local folder to read (load_dataset's "
        "`data_files`).",
    )
    revision: str | None = Field(None, description="Hub dataset revision: a branch, tag or commit.")
    splits: Splits = Field(default_factory=Splits)
    # alpaca: the prompt style around instruction/input/output
    prompt_style: Literal["alpaca", "chat"] = "alpaca"
    # sharegpt / chat: where the turns live and how to read them
    field_messages: str | None = Field(
        None, description="Key holding the turns; default: 'conversations' or 'messages'."
    )
    role_field: str | None = None
    content_field: str | None = None
    roles_to_train: list[str] = Field(default_factory=lambda: ["assistant"])
    chat_template: str | None = None
    # completion: which key holds the raw text
    field_text: str = "text"
    # custom: field names and prompt templates ({instruction}, {input}, {system} placeholders)
    field_instruction: str = "instruction"
    field_input: str = "input"
    field_output: str = "output"
    field_system: str | None = None
    system_prompt: str | None = None
    prompt_format: str | None = None
    no_input_format: str | None = None

    @field_validator("path")
    @classmethod
    def _path_given(cls, value: str) -> str:
        if not value or not value.strip():
            raise ValueError("dataset path is empty: give a .json/.jsonl file or an s3:// URI")
        return value.strip()


class TrainingSettings(_Section):
    epochs: float = Field(1.0, gt=0)
    max_steps: PositiveInt | None = Field(None, description="Stop after this many optimizer steps.")
    batch_size: PositiveInt = Field(1, description="Micro-batch size per device.")
    eval_batch_size: PositiveInt | None = None
    gradient_accumulation_steps: PositiveInt = 1
    learning_rate: float = Field(2e-4, gt=0)
    scheduler: SchedulerType = "cosine"
    warmup_steps: int = Field(0, ge=0)
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    optimizer: OptimizerType = "adamw_torch"
    adam_beta1: float = Field(0.9, ge=0, lt=1)
    adam_beta2: float = Field(0.999, ge=0, lt=1)
    adam_epsilon: float = Field(1e-8, gt=0)
    max_grad_norm: float | None = Field(1.0, ge=0, description="Gradient clipping; null disables.")
    save_steps: PositiveInt | None = Field(None, description="Checkpoint every N optimizer steps.")
    saves_per_epoch: PositiveInt | None = None
    save_total_limit: PositiveInt | None = None
    logging_steps: PositiveInt = 10
    eval_steps: PositiveInt | None = None
    evals_per_epoch: PositiveInt | None = None
    gradient_checkpointing: bool = False
    sequence_len: int = Field(2048, ge=16)
    sample_packing: bool = False
    train_on_inputs: bool = Field(
        False, description="False: prompt tokens are masked out of the loss."
    )
    precision: Precision = Field(
        "auto",
        description="auto: bf16 on CUDA with bf16 and on CPUs with AMX/AVX512-BF16, fp16 on "
        "older GPUs, else fp32.",
    )
    kernels: Kernels = Field(
        "auto",
        description="Loss/LM-head kernels. torch: the LM head and cross-entropy run in chunks "
        "at labelled positions only (no full logits); liger: liger-kernel's fused linear "
        "cross-entropy, RMSNorm, RoPE and SwiGLU (CUDA only); none: the model's own forward; "
        "auto: liger on CUDA when installed, else torch.",
    )
    resume_from_checkpoint: str | None = Field(
        None, description="A checkpoint directory; by default the newest one in output_dir."
    )
    auto_resume: bool = True


class WandbSettings(_Section):
    """Weights & Biases. The API key comes from WANDB_API_KEY in the environment (in a
    FineTuneJob: `env` with `valueFrom.secretKeyRef`), never from the config."""

    project: str | None = Field(
        None, description="W&B project; setting it turns W&B logging on (axolotl: wandb_project)."
    )
    entity: str | None = Field(None, description="W&B team or user (axolotl: wandb_entity).")
    name: str | None = Field(None, description="Run display name (axolotl: wandb_name).")
    mode: Literal["online", "offline", "disabled"] = Field(
        "online",
        description="offline writes the run under output_dir/wandb for `wandb sync` later "
        "(axolotl: wandb_mode).",
    )


class MlflowSettings(_Section):
    """MLflow. Credentials (MLFLOW_TRACKING_TOKEN, MLFLOW_TRACKING_USERNAME/PASSWORD) come
    from the environment, never from the config."""

    tracking_uri: str | None = Field(
        None,
        description="http(s):// server, file:// or local path store; setting it (or "
        "experiment_name) turns MLflow logging on (axolotl: mlflow_tracking_uri).",
    )
    experiment_name: str | None = Field(
        None, description="Experiment to log into (axolotl: mlflow_experiment_name)."
    )
    run_name: str | None = Field(None, description="Run name (axolotl: mlflow_run_name).")


class TrackingSettings(_Section):
    """Experiment trackers that receive loss, eval loss, perplexity, learning rate, grad norm,
    tokens/s and the config. Rank 0 logs; needs the `tracking` extra."""

    wandb: WandbSettings = Field(default_factory=WandbSettings)
    mlflow: MlflowSettings = Field(default_factory=MlflowSettings)
    tensorboard: bool = Field(
        False,
        description="Write TensorBoard event files to output_dir/runs (axolotl: use_tensorboard).",
    )

    @property
    def enabled(self) -> list[str]:
        """The trackers this config turns on, in a fixed order."""
        on = []
        if self.wandb.project and self.wandb.mode != "disabled":
            on.append("wandb")
        if self.mlflow.tracking_uri or self.mlflow.experiment_name:
            on.append("mlflow")
        if self.tensorboard:
            on.append("tensorboard")
        return on


class FineTuneConfig(_Section):
    """A complete fine-tuning run."""

    base_model: str = Field(description="Local path, s3:// URI, builtin:NAME or hub id.")
    tokenizer: str | None = None
    trust_remote_code: bool = False
    adapter: AdapterType = "lora"
    lora: LoraSettings = Field(default_factory=LoraSettings)
    quantization: QuantizationSettings | None = None
    datasets: list[DatasetSettings] = Field(min_length=1)
    chat_template: str | None = Field(
        None, description="Template name (chatml, llama3, tokenizer_default, ...) or Jinja text."
    )
    special_tokens: dict[str, str] = Field(default_factory=dict)
    added_tokens: list[str] = Field(
        default_factory=list,
        description="New tokens added to the tokenizer (after special_tokens), each kept whole "
        "when tokenizing; the embeddings grow to fit. axolotl's `tokens`.",
    )
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    deepspeed: str | dict[str, Any] | None = Field(
        None, description="zero1|zero2|zero3|zero2_offload|zero3_offload, a JSON path, or a dict."
    )
    tracking: TrackingSettings = Field(default_factory=TrackingSettings)
    output_dir: str = "./outputs"
    seed: int = 42
    dataset_prepared_path: str | None = Field(
        None,
        description="Folder for the tokenized, packed dataset cache (`finetune preprocess`); "
        "default: output_dir/prepared_data. Each cache lives in a subfolder named by a hash "
        "of everything that affects it.",
    )
    dataset_processes: PositiveInt | None = Field(
        None,
        description="Processes that tokenize while preparing the data; default: every CPU core.",
    )

    @field_validator("base_model")
    @classmethod
    def _base_model_given(cls, value: str) -> str:
        if not value or not value.strip():
            raise ValueError("base_model is empty: name a local path, s3:// URI or hub model id")
        return value.strip()

    @field_validator("output_dir")
    @classmethod
    def _no_traversal(cls, value: str) -> str:
        return check_safe_path(value)

    @field_validator("dataset_prepared_path")
    @classmethod
    def _prepared_no_traversal(cls, value: str | None) -> str | None:
        return check_safe_path(value) if value is not None else None

    @field_validator("deepspeed")
    @classmethod
    def _deepspeed_form(cls, value: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
        if isinstance(value, str):
            value = value.strip()
            if not value:
                return None
            if value not in DEEPSPEED_PRESETS and not value.endswith(".json"):
                raise ValueError(
                    f"{value!r} is neither a preset ({', '.join(DEEPSPEED_PRESETS)}) "
                    "nor a path to a .json DeepSpeed config"
                )
        return value

    # Derived views the runtime uses, so no caller re-derives them differently.
    @property
    def uses_lora_family(self) -> bool:
        return self.adapter in ADAPTERS_USING_LORA_CONFIG

    @property
    def is_prompt_learning(self) -> bool:
        return self.adapter in PROMPT_LEARNING_ADAPTERS

    @property
    def is_quantized(self) -> bool:
        return self.quantization is not None

    def to_yaml(self) -> str:
        """The canonical form as YAML (what `finetune init` writes and the operator mounts)."""
        import yaml

        data = self.model_dump(mode="json", exclude_defaults=False)
        return yaml.safe_dump(data, sort_keys=False)


def unmergeable_reason(adapter: str) -> str | None:
    """Why an adapter of this type cannot be merged into its base model, or None."""
    if adapter in PROMPT_LEARNING_ADAPTERS:
        return (
            f"adapter {adapter!r} trains virtual tokens that are put before every input, not "
            "weight deltas, so it cannot be folded into the base model's weights: serve the "
            "adapter with its base model instead (`finetune generate CONFIG`, `finetune serve`)"
        )
    return None


def check_safe_path(value: str) -> str:
    """Refuse `..` components: output paths must not escape where they are pointed."""
    value = value.strip()
    if not value:
        raise ValueError("must not be empty")
    if "\x00" in value:
        raise ValueError("must not contain NUL bytes")
    if ".." in PurePosixPath(value.replace("\\", "/")).parts:
        raise ValueError(f"{value!r} contains '..': path traversal is not allowed")
    return value


# --------------------------------------------------------------------------- cross-field rules

Rule = tuple[tuple[str | int, ...], str]


def cross_field_rules(config: FineTuneConfig) -> list[Rule]:
    """Rules that involve more than one field, each reported at the field to change."""
    found: list[Rule] = []
    quant, training = config.quantization, config.training
    if config.adapter == "qlora" and (quant is None or quant.bits != 4):
        found.append(
            (
                ("adapter",),
                "adapter 'qlora' requires 4-bit quantization: add `quantization: {bits: 4}` "
                "(axolotl: load_in_4bit: true)",
            )
        )
    if quant is not None and config.adapter == "none":
        found.append(
            (
                ("quantization",),
                "a quantized base model cannot be fully fine-tuned: use adapter 'qlora' or "
                "'lora', or remove quantization",
            )
        )
    if config.is_prompt_learning and training.sample_packing:
        found.append(
            (
                ("training", "sample_packing"),
                f"adapter {config.adapter!r} puts virtual tokens before every sequence, which "
                "packed rows cannot share: set sample_packing to false",
            )
        )
    if config.added_tokens and config.uses_lora_family and not config.lora.modules_to_save:
        found.append(
            (
                ("added_tokens",),
                "new tokens would keep random, untrained embeddings under a LoRA adapter: set "
                "lora.modules_to_save to the embedding layers (Llama: [embed_tokens, lm_head]; "
                "axolotl: lora_modules_to_save), as axolotl requires",
            )
        )
    for a, b in (
        ("warmup_steps", "warmup_ratio"),
        ("save_steps", "saves_per_epoch"),
        ("eval_steps", "evals_per_epoch"),
    ):
        if getattr(training, a) and getattr(training, b):
            found.append((("training", b), f"set {a} or {b}, not both"))
    for i, ds in enumerate(config.datasets):
        here: tuple[str | int, ...] = ("datasets", i)
        if ds.format == "custom" and not ds.prompt_format:
            found.append(
                (
                    here + ("prompt_format",),
                    "format 'custom' needs prompt_format, e.g. '{instruction}\\n{input}\\n' "
                    "(the output field is appended as the response)",
                )
            )
        val, train = ds.splits.validation, ds.splits.train
        if val >= 1 and val != int(val):
            found.append(
                (
                    here + ("splits", "validation"),
                    "must be a fraction below 1 or a whole number of rows",
                )
            )
        if train is not None and (val >= 1 or abs(train + val - 1.0) > 1e-6):
            found.append(
                (
                    here + ("splits", "train"),
                    f"train ({train}) and validation ({val}) must be fractions adding up to 1",
                )
            )
    return found


# --------------------------------------------------------------------------- parsing


def load_config(path: str | Path) -> FineTuneConfig:
    """Read and validate a config file (YAML or JSON)."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"config is {size} bytes; the limit is {MAX_CONFIG_BYTES} bytes (10 MB)", str(path)
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config is not UTF-8 text (byte {exc.start})", str(path)) from exc
    return parse_config(text, source=str(path))


def parse_config(data: str | dict[str, Any], source: str = "<config>") -> FineTuneConfig:
    """Validate a config given as YAML/JSON text or as an already-parsed mapping.

    Raises ConfigError listing every problem, each with field and line.
    """
    return parse_config_with_warnings(data, source)[0]


def parse_config_with_warnings(
    data: str | dict[str, Any],
    source: str = "<config>",
    extra_rules: Callable[[FineTuneConfig], list[Rule]] | None = None,
) -> tuple[FineTuneConfig, list[str]]:
    """Like parse_config, also returning warnings (e.g. axolotl keys that are ignored).

    `extra_rules` adds checks of a valid config (e.g. that referenced files exist), reported
    like the schema's own: at the key the user wrote, with its line.
    """
    from finetune_runtime.config.axolotl import normalize

    if isinstance(data, str):
        raw, index = load_yaml(data, source)
    else:
        check_size(json.dumps(data, default=str), source)
        raw, index = data, LineIndex()
    if raw is None:
        raise ConfigError(
            "config is empty: expected a mapping with base_model and datasets", source
        )
    if not isinstance(raw, dict):
        raise ConfigError(
            f"config must be a mapping of keys to values, not a {type(raw).__name__}", source
        )
    normalized = normalize(raw)
    issues = list(normalized.issues)
    config: FineTuneConfig | None = None
    try:
        config = FineTuneConfig.model_validate(normalized.data)
    except ValidationError as exc:
        issues.extend(_issues_from_validation(exc, normalized.origin))
    else:
        rules = cross_field_rules(config)
        if extra_rules is not None and not rules:
            rules = extra_rules(config)
        for loc, message in rules:
            issues.append(ConfigIssue.at(normalized.origin(loc), message))
    if issues:
        for issue in issues:
            if issue.line is None and issue.path is not None:
                issue.line = index.line_of(issue.path)
        raise ConfigError(issues, source)
    assert config is not None
    return config, normalized.warnings


def _issues_from_validation(exc: ValidationError, origin: Origin) -> list[ConfigIssue]:
    issues = []
    for err in exc.errors(include_url=False):
        loc = _field_loc(err["loc"])
        path = origin(loc)
        message = err["msg"]
        if message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        if err["type"] == "extra_forbidden":
            message = _unknown_key_message(loc)
        elif err["type"] == "missing":
            message = "is required"
        elif err["type"] == "literal_error":
            message = f"{message} (got {err.get('input')!r})"
        issues.append(ConfigIssue.at(path, message))
    return issues


def _field_loc(loc: tuple[str | int, ...]) -> tuple[str | int, ...]:
    """Drop the union-member tags pydantic adds to a loc, e.g. ('deepspeed', 'str')."""
    kept: list[str | int] = []
    model: type[BaseModel] | None = FineTuneConfig
    for part in loc:
        if isinstance(part, str):
            # Below a model every part is a key the user wrote (even `str` or `a[b`); tags
            # only follow a field whose value is not a model (a union such as deepspeed's).
            if model is None and _looks_like_type_tag(part):
                continue
            field = model.model_fields.get(part) if model is not None else None
            model = _model_in(field.annotation) if field is not None else None
        kept.append(part)
    return tuple(kept)


def _looks_like_type_tag(part: str) -> bool:
    return "[" in part or "(" in part or part in {"str", "int", "float", "bool"}


def _unknown_key_message(loc: tuple[str | int, ...]) -> str:
    model: type[BaseModel] = FineTuneConfig
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None) if field else None
        model = _model_in(annotation) or model
    known = sorted(model.model_fields)
    guess = difflib.get_close_matches(str(loc[-1]), known, n=1)
    hint = f"; did you mean {guess[0]!r}?" if guess else f"; known keys: {', '.join(known)}"
    return f"unknown key{hint}"


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_in(arg)
        if found is not None:
            return found
    return None


Origin = Any  # callable: canonical loc -> user-written path
