"""Fuzzing FineTuneJob specs through validation, the pure reconciler and the manifest builders.

Inputs: specs with wrong or boundary values at every field of FineTuneJobSpec (paths and
types generated from the pydantic model, camelCase as on the wire), random mappings,
random job names, and valid specs built from typed values, each also driven through a
few later cycles (pods running, failing, finished; the clock far in the future).

Properties:
- validation accepts or raises SpecError naming `spec.<field>` / `metadata.name` for
  every issue, with a message and the advice to fix and re-apply;
- `reconcile` never raises: an invalid spec becomes phase Failed with an InvalidSpec
  condition and one Warning event carrying that message, and creates nothing;
- a literal env value (a secret written inline, bad practice) never reaches status or
  events, whatever else is wrong with the spec;
- every child of a valid spec is owner-referenced to the job (controller), pods carry
  the hardened securityContext and no API token, S3 credentials only as secretKeyRefs;
  a sample passes kubernetes-validate's official schemas.
"""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import kubernetes_validate
from fuzz_strategies import ANY, TEXT, field_value, fuzz_settings, leaf_fields, set_path
from hypothesis import event, example, given, note
from hypothesis import strategies as st

from finetune_operator import constants as c
from finetune_operator import manifests as m
from finetune_operator import status as s
from finetune_operator.reconcile import Decision, Observed, reconcile
from finetune_operator.spec import FineTuneJobSpec, SpecError, validate_job

K8S_VERSION = "1.37"
NOW = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)
SETTINGS = m.PodSettings(default_image="runtime:test", progress_port=9400)
MARKER = "inline-env-value-7f3a9c"  # a literal env value: must stay out of status and events

CONFIG: dict[str, Any] = {
    "base_model": "builtin:tiny-llama",
    "datasets": [{"path": "train.jsonl"}],
    "training": {"max_steps": 10},
}
BASE_SPEC: dict[str, Any] = {
    "config": CONFIG,
    "nodes": 2,
    "dataset": {
        "uri": "s3://datasets/alpaca",
        "endpoint": "http://minio:9000",
        "secretRef": {"name": "s3"},
    },
    "model": {"uri": "s3://models/tiny", "secretRef": {"name": "s3", "accessKeyIdKey": "id"}},
    "env": [
        {"name": "API_TOKEN", "value": MARKER},
        {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}},
    ],
}
SPEC_FIELDS = leaf_fields(FineTuneJobSpec, alias=True)
CONFIGS = st.sampled_from(
    [
        CONFIG,
        "base_model: builtin:tiny-llama\ndatasets:\n  - path: train.jsonl\n",
        "base_model: b\ndatasets: [{path: s3://elsewhere/x.jsonl}]\n",  # not under dataset.uri
        "lora_r: 8\nbase_model: b\ndatasets: [{path: s3://datasets/alpaca/a.jsonl, type: x}]\n",
        "base_model: b\ndatasets: [{path: a}]\nlora: {r: 0}\n",
        "[unclosed",
        "",
        {"base_model": "b", "datasets": []},
    ]
)
DNS_NAMES = st.from_regex(r"[a-z]([-a-z0-9]{0,30}[a-z0-9])?", fullmatch=True)
NAMES = st.one_of(DNS_NAMES, DNS_NAMES, TEXT, st.just("a" * 60))


def job(spec: Any, name: str = "llama", status: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": c.API_VERSION,
        "kind": c.KIND,
        "metadata": {"name": name, "namespace": "ml", "uid": f"uid-{name}", "generation": 1},
        "spec": spec,
    }
    if status is not None:
        body["status"] = status
    return body


# ----------------------------------------------------------------------------- checks


def check_spec_error(exc: SpecError) -> None:
    text = str(exc)
    assert exc.issues and "Fix the FineTuneJob and apply it again." in text
    for issue in exc.issues:
        assert issue.message.strip(), issue
        assert issue.field == "metadata.name" or issue.field.startswith("spec"), issue
        if issue.field.startswith("spec.config."):  # rendered by the config's ConfigError
            assert "spec.config" in text and issue.field.removeprefix("spec.config.") in text
        else:
            assert issue.field in text, (issue.field, text)


def check_no_leak(decision: Decision) -> None:
    written = json.dumps([decision.status, [e.__dict__ for e in decision.events]], default=str)
    assert MARKER not in written, written


def check_children(body: dict[str, Any], decision: Decision) -> None:
    uid = body["metadata"]["uid"]
    for child in decision.create + decision.update:
        refs = child["metadata"]["ownerReferences"]
        assert refs == [m.owner_reference(m.JobRef.from_body(body))], refs
        assert refs[0]["uid"] == uid and refs[0]["controller"] is True
        assert child["metadata"]["namespace"] == "ml"
        if child["kind"] == "Pod":
            asked = ((body["spec"].get("podTemplate") or {}).get("spec") or {}).get("hostNetwork")
            check_pod(child, host_network_asked=asked is True)
        if child["kind"] == "ConfigMap":
            assert MARKER not in json.dumps(child)


def check_pod(pod: dict[str, Any], host_network_asked: bool = False) -> None:
    spec = pod["spec"]
    assert spec["automountServiceAccountToken"] is False
    assert spec["restartPolicy"] == "Never"
    ctx = spec["securityContext"]
    assert ctx["runAsNonRoot"] is True and ctx.get("runAsUser") != 0
    assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}
    # hostNetwork only where the job's podTemplate asked for it (RDMA); never PID/IPC.
    assert bool(spec.get("hostNetwork")) == host_network_asked
    assert not spec.get("hostPID") and not spec.get("hostIPC")
    for volume in spec["volumes"]:
        assert "hostPath" not in volume
    for container in spec.get("initContainers", []) + spec["containers"]:
        sc = container["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False and sc["runAsNonRoot"] is True
        assert sc["capabilities"] == {"drop": ["ALL"]} and not sc.get("privileged")
        for env in container.get("env", []):
            if env["name"].startswith("AWS_") and "KEY" in env["name"]:
                assert "value" not in env, env
                assert set(env["valueFrom"]) == {"secretKeyRef"}, env


def cycles(body: dict[str, Any], first: Decision) -> list[Decision]:
    """Drive a job on: pods run, one fails, all succeed, then far-future resyncs."""
    body = copy.deepcopy(body)
    decisions = [first]
    pods = [copy.deepcopy(p) for p in first.create if p["kind"] == "Pod"]
    steps = [
        ("Running", timedelta(minutes=1)),
        ("Failed", timedelta(hours=1)),
        ("Succeeded", timedelta(days=400)),
        ("Succeeded", timedelta(days=365 * 5000)),
    ]
    decision = first
    for phase, later in steps:
        body["status"] = copy.deepcopy(decision.status)
        for pod in pods:
            pod["status"] = {"phase": phase, "podIP": "10.0.0.1"}
        decision = reconcile(body, Observed(pods=pods), NOW + later, SETTINGS)
        decisions.append(decision)
        deleted = {ref.name for ref in decision.delete if ref.kind == "Pod"}
        pods = [p for p in pods if p["metadata"]["name"] not in deleted]
        pods += [copy.deepcopy(p) for p in decision.create if p["kind"] == "Pod"]
    return decisions


def exercise(body: dict[str, Any]) -> None:
    note(json.dumps(body["spec"], default=repr)[:2000])
    try:
        valid_job = validate_job(body)
    except SpecError as exc:
        check_spec_error(exc)
        valid = False
    else:
        valid = True
    decision = reconcile(body, Observed(), NOW, SETTINGS)
    check_no_leak(decision)
    phase = decision.status["phase"]
    if not valid or phase == s.FAILED:
        event("invalid")
        failed = s.get_condition(decision.status["conditions"], s.FAILED)
        assert phase == s.FAILED and failed is not None and failed["reason"] == "InvalidSpec"
        assert "spec" in failed["message"] or "metadata.name" in failed["message"]
        assert not decision.create and not decision.update
        assert [(e.type, e.reason) for e in decision.events] == [("Warning", "InvalidSpec")]
        return
    event("valid")
    assert phase in (s.CREATED, s.PENDING, s.SUSPENDED), decision.status
    if phase == s.PENDING:  # nothing observed yet: it may wait only for a claim the user named
        assert valid_job.spec.storage.existing_claim, decision.status
    check_children(body, decision)
    for later in cycles(body, decision):
        check_no_leak(later)
        check_children(body, later)


# ----------------------------------------------------------------------------- tests


@fuzz_settings(250, deadline_ms=None)
@given(
    st.lists(
        st.sampled_from(SPEC_FIELDS).flatmap(
            lambda field: st.tuples(st.just(field[0]), field_value(field[1]))
        ),
        min_size=1,
        max_size=3,
    ),
    st.one_of(st.just(CONFIG), CONFIGS),
)
# Found by this test (FINETUNE_FUZZ=deep) and fixed: timedelta overflow in reconcile.
@example([(("runPolicy", "activeDeadlineSeconds"), 251666568000)], CONFIG)
@example([(("runPolicy", "ttlSecondsAfterFinished"), 2**63 - 1)], CONFIG)
@example([(("storage", "existingClaim"), "")], CONFIG)  # waited forever for PVC '', fixed
def test_wrong_or_boundary_values_at_every_spec_field(
    mutations: list[tuple[tuple[str | int, ...], Any]], config: Any
) -> None:
    spec = copy.deepcopy(BASE_SPEC)
    spec["config"] = copy.deepcopy(config)
    for path, value in mutations:
        set_path(spec, path, value)
    exercise(job(spec))


@fuzz_settings(100, deadline_ms=None)
@given(
    st.one_of(
        ANY,
        st.dictionaries(
            st.one_of(st.sampled_from(sorted({p[0] for p, _ in SPEC_FIELDS})), TEXT),
            st.one_of(ANY, CONFIGS),
            max_size=6,
        ),
    ),
    NAMES,
)
@example(True, "llama")  # found and fixed: a non-mapping spec crashed _run_policy
@example({"runPolicy": "x", "config": CONFIG}, "llama")
def test_random_specs_and_names(spec: Any, name: str) -> None:
    if isinstance(spec, dict) and "env" not in spec:
        spec["env"] = [{"name": "API_TOKEN", "value": MARKER}]
    exercise(job(spec, name=name))


# Free-form fields (passed to the pod as written) from valid Kubernetes shapes, the rest
# from each field's own type: accepted specs must give schema-valid children.
VALID_FREE_FORM = {
    "tolerations": st.lists(
        st.fixed_dictionaries(
            {"key": st.sampled_from(["nvidia.com/gpu", "spot"])},
            optional={
                "operator": st.sampled_from(["Exists", "Equal"]),
                "effect": st.sampled_from(["NoSchedule", "NoExecute"]),
            },
        ),
        max_size=2,
    ),
    "affinity": st.sampled_from(
        [
            None,
            {
                "podAntiAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": [
                        {"topologyKey": "kubernetes.io/hostname"}
                    ]
                }
            },
        ]
    ),
    "nodeSelector": st.dictionaries(
        st.sampled_from(["nvidia.com/gpu.product", "pool"]), DNS_NAMES, max_size=2
    ),
    "env": st.lists(
        st.one_of(
            st.fixed_dictionaries({"name": st.from_regex(r"[A-Z_]{1,12}", fullmatch=True)}),
            st.fixed_dictionaries(
                {"name": st.from_regex(r"[A-Z_]{1,12}", fullmatch=True), "value": TEXT}
            ),
            st.fixed_dictionaries(
                {
                    "name": st.from_regex(r"[A-Z_]{1,12}", fullmatch=True),
                    "valueFrom": st.just({"secretKeyRef": {"name": "hf", "key": "token"}}),
                }
            ),
        ),
        max_size=3,
    ),
}
TYPED_FIELDS = [
    (path, annotation)
    for path, annotation in SPEC_FIELDS
    if path[0] not in VALID_FREE_FORM and path != ("config",) and "valueFrom" not in path
]


@fuzz_settings(40, deadline_ms=None)
@given(
    st.lists(
        st.sampled_from(TYPED_FIELDS).flatmap(
            lambda field: st.tuples(st.just(field[0]), field_value(field[1]))
        ),
        max_size=4,
    ),
    st.fixed_dictionaries({}, optional=VALID_FREE_FORM),
    DNS_NAMES,
)
def test_children_of_accepted_specs_pass_the_kubernetes_schema(
    mutations: list[tuple[tuple[str | int, ...], Any]], free: dict[str, Any], name: str
) -> None:
    spec = copy.deepcopy(BASE_SPEC)
    spec.update(free)
    for path, value in mutations:
        set_path(spec, path, value)
    body = job(spec, name=name)
    try:
        validate_job(body)
    except SpecError as exc:
        check_spec_error(exc)
        event("invalid")
        return
    decision = reconcile(body, Observed(), NOW, SETTINGS)
    if decision.status["phase"] == s.FAILED:  # the effective config's path rewrite refused it
        event("invalid")
        return
    event("valid")
    check_children(body, decision)
    kinds = set()
    for child in decision.create:
        if child["kind"] in kinds and child["kind"] == "Pod":
            continue  # the workers differ only in rank: one is enough (validation is slow)
        kinds.add(child["kind"])
        kubernetes_validate.validate(child, K8S_VERSION, strict=True)
