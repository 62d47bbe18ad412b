"""The deployment files say what the runtime needs: probes, drain time, resources."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def documents(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((DEPLOY / "kubernetes" / name).read_text()) if d]


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def option(args: list[str], name: str) -> float:
    return float(args[args.index(name) + 1])


def test_every_kustomization_resource_exists() -> None:
    (kustomization,) = documents("kustomization.yaml")
    for resource in kustomization["resources"]:
        assert (DEPLOY / "kubernetes" / resource).is_file(), resource


def test_deployments_have_the_probes_the_node_serves() -> None:
    for name in ("deployment.yaml", "canary.yaml"):
        (deployment,) = documents(name)
        assert deployment["kind"] == "Deployment"
        spec = container(deployment)
        paths = {
            probe: spec[probe]["httpGet"]["path"]
            for probe in ("startupProbe", "livenessProbe", "readinessProbe")
        }
        assert paths == {
            "startupProbe": "/healthz/startup",
            "livenessProbe": "/healthz/live",
            "readinessProbe": "/healthz/ready",
        }
        assert spec["resources"]["requests"]["memory"] and spec["resources"]["limits"]["memory"]
        assert spec["lifecycle"]["preStop"]["exec"]["command"]


def test_kubernetes_waits_longer_than_the_drain() -> None:
    for name in ("deployment.yaml", "canary.yaml"):
        (deployment,) = documents(name)
        spec = container(deployment)
        grace = option(spec["args"], "--grace-period")
        pre_stop = float(spec["lifecycle"]["preStop"]["exec"]["command"][-1])
        termination = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert termination > grace + pre_stop


def test_database_and_token_come_from_the_secret() -> None:
    (deployment,) = documents("deployment.yaml")
    env = {e["name"]: e for e in container(deployment)["env"]}
    for name in ("NONSTOP_DATABASE_URL", "NONSTOP_API_TOKEN"):
        assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "nonstop"
    (secret,) = documents("secret.example.yaml")
    assert secret["stringData"]["database-url"].startswith("postgresql://")
    assert deployment["spec"]["replicas"] >= 2  # many nodes share the work


def test_the_systemd_unit_restarts_with_sense_and_waits_for_the_drain() -> None:
    unit: dict[str, str] = {}
    for line in (DEPLOY / "systemd" / "nonstop.service").read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            unit[key.strip()] = value.strip()
    assert unit["Type"] == "notify" and unit["Restart"] == "on-failure"
    assert unit["KillSignal"] == "SIGTERM"
    assert float(unit["RestartSec"].removesuffix("s")) > 0
    assert float(unit["WatchdogSec"].removesuffix("s")) > 0
    exec_args = unit["ExecStart"].split()
    grace = float(exec_args[exec_args.index("--grace-period") + 1])
    assert float(unit["TimeoutStopSec"].removesuffix("s")) > grace
    # isolated runs get their own cgroup v2 memory.max only inside a delegated subtree
    assert "memory" in unit["Delegate"].split() or unit["Delegate"] == "yes"
