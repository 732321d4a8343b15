"""The FineTuneJob spec: pydantic models (camelCase on the wire) and their validation.

One module per concern: `storage` (S3 sources, outputs, the checkpoint volume),
`workers` (resources, env, references), `run_policy`, `serve`, `job` (the spec itself
and its cross-field rules), `errors` (SpecError), `validate` (the whole job, config
included). The reconciler reads a job through `finetune_operator.parsed.parse_job`.
"""

from finetune_operator.spec.base import (
    DEFAULT_GRACE_SECONDS,
    DEFAULT_STARTUP_TIMEOUT_SECONDS,
    DEFAULT_STORAGE_SIZE,
)
from finetune_operator.spec.errors import SpecError, SpecIssue
from finetune_operator.spec.job import FineTuneJobSpec
from finetune_operator.spec.run_policy import RunPolicy
from finetune_operator.spec.serve import ServeSpec
from finetune_operator.spec.storage import S3Output, S3Source, SecretRef, Storage
from finetune_operator.spec.validate import (
    ValidJob,
    check_admission,
    check_job,
    check_name,
    parse_spec,
    validate_job,
)
from finetune_operator.spec.workers import EnvVar, Resources, SecretKeyRef

__all__ = [
    "DEFAULT_GRACE_SECONDS",
    "DEFAULT_STARTUP_TIMEOUT_SECONDS",
    "DEFAULT_STORAGE_SIZE",
    "EnvVar",
    "FineTuneJobSpec",
    "Resources",
    "RunPolicy",
    "S3Output",
    "S3Source",
    "SecretKeyRef",
    "SecretRef",
    "ServeSpec",
    "SpecError",
    "SpecIssue",
    "Storage",
    "ValidJob",
    "check_admission",
    "check_job",
    "check_name",
    "parse_spec",
    "validate_job",
]
