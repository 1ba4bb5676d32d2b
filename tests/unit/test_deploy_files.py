"""The files that deploy karma-trio agree with the program and with each other: the systemd
unit, the Dockerfile and the Kubernetes manifests (ports, paths, probes, user, version)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

import karma
from karma.tools import unit as unit_file
from tests import dockerfile

KUBERNETES = Path(__file__).resolve().parents[2] / "ops" / "kubernetes"
FINAL = dockerfile.stages()[-1]
IMAGE_ENV = dockerfile.environment(FINAL)


def manifests() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(KUBERNETES.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            found[document["kind"]] = document
    return found


def pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = manifests()["StatefulSet"]["spec"]["template"]["spec"]
    return spec


def container() -> dict[str, Any]:
    (only,) = pod_spec()["containers"]
    return dict(only)


# --- systemd -------------------------------------------------------------------------------
def test_the_unit_is_hardened_and_binds_loopback_unless_configured() -> None:
    lines = unit_file.read(unit_file.UNIT).splitlines()
    for line in ("RestartPreventExitStatus=2", "SystemCallFilter=@system-service", "UMask=0027"):
        assert line in lines
    # a default for KARMA_HOST that the environment file, read after it, may override
    default = lines.index("Environment=KARMA_HOST=127.0.0.1")
    assert default < lines.index("EnvironmentFile=-/etc/default/karma-trio")


def test_the_unit_exists_once_in_the_repository() -> None:
    root = Path(__file__).resolve().parents[2]
    # environments, build output and benchmark checkouts
    skipped = {".venv", ".git", "build", "dist", ".build"}
    copies = [p for p in root.rglob("karma-trio.service") if not skipped & set(p.parts)]
    assert [p.relative_to(root) for p in copies] == [Path("karma/ops_data/karma-trio.service")]


# --- Dockerfile ----------------------------------------------------------------------------
def test_the_image_builds_on_a_pinned_python_and_runs_unprivileged() -> None:
    bases = [stage[0].words()[0] for stage in dockerfile.stages()]
    assert all(re.fullmatch(r"python:3\.11-slim", base) for base in bases), bases
    user = dockerfile.last(FINAL, "USER").arguments
    assert re.fullmatch(r"[1-9]\d*:[1-9]\d*", user), user  # numeric and not root
    assert dockerfile.last(FINAL, "CMD").words() == ["karma-trio", "serve"]


def test_the_image_exposes_its_ports_and_keeps_data_on_a_volume() -> None:
    exposed = dockerfile.last(FINAL, "EXPOSE").words()
    assert exposed == [IMAGE_ENV["KARMA_PORT"], IMAGE_ENV["KARMA_METRICS_PORT"]]
    assert dockerfile.last(FINAL, "VOLUME").words() == [IMAGE_ENV["KARMA_DUMP_DIR"]]
    assert IMAGE_ENV["KARMA_HOST"] == IMAGE_ENV["KARMA_METRICS_HOST"] == "0.0.0.0"


def test_the_healthcheck_asks_the_metrics_port_for_healthz() -> None:
    command = dockerfile.healthcheck_command(FINAL)
    assert command[:2] == ["python", "-c"]
    assert "://127.0.0.1:%s/healthz" in command[2]
    assert "'https' if tls else 'http'" in command[2]  # https once KARMA_TLS_CERT is set
    assert "os.environ['KARMA_METRICS_PORT']" in command[2]


def hadolint() -> str | None:
    beside = Path(sys.executable).with_name("hadolint")  # installed by the test extras
    return str(beside) if beside.exists() else shutil.which("hadolint")


@pytest.mark.skipif(hadolint() is None, reason="hadolint not installed (test extras, Linux x86-64)")
def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    linter = hadolint()
    assert linter is not None
    done = subprocess.run(
        [linter, "--no-color", str(dockerfile.DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


# --- Kubernetes ----------------------------------------------------------------------------
def test_the_manifests_validate_against_the_kubernetes_schemas() -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    version = kubernetes_validate.latest_version()
    found = manifests()
    assert set(found) == {"Service", "StatefulSet", "Kustomization"}
    for kind in ("Service", "StatefulSet"):  # a Kustomization is kubectl's, not the API's
        kubernetes_validate.validate(found[kind], version, strict=True)  # raises when invalid


def test_probes_ask_the_metrics_port_for_readyz_and_healthz() -> None:
    spec = container()
    ports = {port["name"]: port["containerPort"] for port in spec["ports"]}
    assert ports == {
        "karma": int(IMAGE_ENV["KARMA_PORT"]),
        "metrics": int(IMAGE_ENV["KARMA_METRICS_PORT"]),
    }
    env = {item["name"]: item.get("value") for item in spec["env"]}
    assert env["KARMA_METRICS_PORT"] == IMAGE_ENV["KARMA_METRICS_PORT"]
    probes = {name: spec[name]["httpGet"] for name in ("readinessProbe", "livenessProbe")}
    assert probes["readinessProbe"] == {"path": "/readyz", "port": "metrics"}
    assert probes["livenessProbe"] == {"path": "/healthz", "port": "metrics"}
    assert spec["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}


def test_prometheus_scrapes_the_metrics_port() -> None:
    template = manifests()["StatefulSet"]["spec"]["template"]
    annotations = template["metadata"]["annotations"]
    assert annotations == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": IMAGE_ENV["KARMA_METRICS_PORT"],
        "prometheus.io/path": "/metrics",
    }


def test_the_data_directory_is_a_persistent_volume_owned_by_the_image_user() -> None:
    statefulset = manifests()["StatefulSet"]["spec"]
    (claim,) = statefulset["volumeClaimTemplates"]
    (mount,) = container()["volumeMounts"]
    assert (mount["name"], mount["mountPath"]) == (
        claim["metadata"]["name"],
        IMAGE_ENV["KARMA_DUMP_DIR"],
    )
    uid, gid = dockerfile.last(FINAL, "USER").arguments.split(":")
    security = pod_spec()["securityContext"]
    assert (security["runAsUser"], security["runAsGroup"], security["fsGroup"]) == (
        int(uid),
        int(gid),
        int(gid),
    )
    assert security["runAsNonRoot"] is True


def test_the_service_selects_the_pods_and_the_image_is_this_version() -> None:
    found = manifests()
    labels = found["StatefulSet"]["spec"]["template"]["metadata"]["labels"]
    assert found["Service"]["spec"]["selector"].items() <= labels.items()
    assert found["StatefulSet"]["spec"]["serviceName"] == found["Service"]["metadata"]["name"]
    assert container()["image"] == f"karma-trio:{karma.__version__}"
