"""`minigate serving plan`: the `vllm serve` command and Kubernetes manifests for each vLLM upstream.

Pure functions over the config: nothing is started or called. One vLLM server serves one base model
and any number of LoRA adapters on it, so an upstream of kind `vllm` becomes one Deployment and one
Service, whose name is the first label of the upstream's `base_url` host when that is a valid
Service name (so the gateway's config already points at it).

Example::

    for plan in plan_vllm(config.upstreams, config.models):
        print(shlex.join(plan.command))
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from minigate.serving.settings import ModelEntry, OpenAIUpstream, Upstream, lora_adapters

__all__ = ["PlanError", "PlanOptions", "VllmPlan", "plan_vllm"]

_DEFAULT_PORT = 8000  # vLLM's own default
_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")


class PlanError(Exception):
    """A vLLM upstream the plan cannot be made for; the message says which and what to set."""


@dataclass(frozen=True)
class PlanOptions:
    """Flags that are a deployment's choice rather than the gateway's config."""

    image: str = "vllm/vllm-openai:latest"
    gpu_memory_utilization: float = 0.90  # vLLM's default; leaves room for CUDA graphs and the sampler
    max_num_seqs: int = 256  # concurrent sequences per step: the batch size that bounds KV-cache demand
    max_lora_rank: int = 16  # the largest adapter rank served; slots are sized for it, so keep it tight


@dataclass(frozen=True)
class VllmPlan:
    """One vLLM server: its command line, its environment, and its Deployment and Service."""

    upstream: str
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)
    manifests: list[dict[str, Any]] = field(default_factory=list)


def plan_vllm(upstreams: Mapping[str, Upstream], models: Mapping[str, ModelEntry],
              options: PlanOptions = PlanOptions()) -> list[VllmPlan]:
    """A plan per upstream of kind `vllm`, in config order."""
    return [_plan(name, spec, models, options) for name, spec in upstreams.items()
            if isinstance(spec, OpenAIUpstream) and spec.kind == "vllm"]


def _plan(name: str, spec: OpenAIUpstream, models: Mapping[str, ModelEntry], options: PlanOptions) -> VllmPlan:
    port = urlsplit(spec.base_url).port or _DEFAULT_PORT
    adapters = lora_adapters(name, spec, models)  # the upstream's and its model entries'
    command = ["vllm", "serve", *_model_flags(name, spec, models, adapters)]
    env: dict[str, str] = {}
    if adapters:
        command += ["--enable-lora", "--lora-modules", *(f"{a}={path}" for a, path in adapters.items()),
                    "--max-loras", str(len(adapters)), "--max-lora-rank", str(options.max_lora_rank)]
        # The gateway loads and unloads adapters at run time (/v1/load_lora_adapter), off by default.
        env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
    command += ["--gpu-memory-utilization", f"{options.gpu_memory_utilization:.2f}",
                "--max-num-seqs", str(options.max_num_seqs), "--port", str(port)]
    service = _service_name(name, spec.base_url)
    manifests = [_deployment(service, command, env, port, options.image), _service(service, port)]
    return VllmPlan(name, command, env, manifests)


def _model_flags(name: str, spec: OpenAIUpstream, models: Mapping[str, ModelEntry],
                 adapters: Mapping[str, str]) -> list[str]:
    """The base model, and the name it is served under when the models call it something else."""
    ids = sorted({m.model for m in models.values() if m.upstream == name and m.model not in adapters})
    if len(ids) > 1:
        raise PlanError(f"upstream {name!r}: its models name several base models ({', '.join(ids)}); a vLLM "
                        "server serves one: set base_model and name the others as adapters")
    base = spec.base_model or (ids[0] if ids else None)
    if base is None:
        raise PlanError(f"upstream {name!r}: no model entry names its base model; set base_model")
    return [base] if not ids or ids[0] == base else [base, "--served-model-name", ids[0]]


def _service_name(name: str, base_url: str) -> str:
    label = (urlsplit(base_url).hostname or "").split(".")[0]
    if _DNS_LABEL.match(label) and label != "localhost":
        return label
    return re.sub(r"[^a-z0-9]+", "-", f"vllm-{name}".lower()).strip("-")[:63]


def _labels(service: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "vllm", "app.kubernetes.io/instance": service,
            "app.kubernetes.io/part-of": "minigate"}


def _deployment(service: str, command: list[str], env: Mapping[str, str], port: int, image: str) -> dict[str, Any]:
    health = {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 5}
    container = {
        "name": "vllm",
        "image": image,
        "command": command[:2],
        "args": command[2:],
        "env": [{"name": k, "value": v} for k, v in env.items()],
        "ports": [{"name": "http", "containerPort": port}],
        "resources": {"limits": {"nvidia.com/gpu": 1}},
        # Loading weights takes minutes: the startup probe allows 10 before the others take over.
        "startupProbe": {**health, "failureThreshold": 120},
        "readinessProbe": {**health, "failureThreshold": 3},
        "livenessProbe": {**health, "failureThreshold": 6},
        "volumeMounts": [{"name": "shm", "mountPath": "/dev/shm"}],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": service, "labels": _labels(service)},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app.kubernetes.io/instance": service}},
            "template": {
                "metadata": {"labels": _labels(service)},
                "spec": {"containers": [container],
                         "volumes": [{"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "2Gi"}}]},
            },
        },
    }


def _service(service: str, port: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": service, "labels": _labels(service)},
        "spec": {"selector": {"app.kubernetes.io/instance": service},
                 "ports": [{"name": "http", "port": port, "targetPort": "http"}]},
    }
