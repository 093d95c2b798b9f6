"""The container harness's own rules, without an engine: it fails with what to do when it
may not install podman, it tags stand-ins with the names the files use, and its kube
transform bridges podman's gaps the way Kubernetes behaves."""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
from typing import Any

import pytest
from deploy.containers import engine as engine_module
from deploy.containers import kube
from deploy.containers.engine import (
    EngineUnavailable,
    choose_ulimits,
    install_missing,
    limit_candidates,
)
from deploy.containers.standins import normalized, wanted_images

ALL_PACKAGES = (
    "podman runc debootstrap catatonit netavark aardvark-dns iptables uidmap slirp4netns "
    "fuse-overlayfs"
)


def test_without_root_and_without_podman_it_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(shutil, "which", lambda _: None)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(engine_module, "Path", _Files(set()))
    wanted = f"sudo apt-get install --no-install-recommends {ALL_PACKAGES}, "
    with pytest.raises(EngineUnavailable, match=re.escape(wanted)):
        install_missing(engine_module.PACKAGES)


class _Files:
    """Stands in for ``Path`` in engine.py: only ``present`` exist."""

    def __init__(self, present: set[str]) -> None:
        self.present = present

    def __call__(self, name: str) -> _File:
        return _File(name, self.present)


class _File:
    def __init__(self, name: str, present: set[str]) -> None:
        self.name = name
        self.present = present

    def exists(self) -> bool:
        return self.name in self.present


HELPERS = {"/usr/lib/podman/netavark", "/usr/lib/podman/aardvark-dns"}


def test_nothing_is_installed_when_everything_is_there(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(engine_module, "Path", _Files(HELPERS))
    install_missing(engine_module.PACKAGES)  # no EngineUnavailable, no apt-get


def test_podman_on_path_without_aardvark_dns_still_installs_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every binary is checked, not only podman's: netavark without its Recommends (the
    DNS server compose service names need) is a broken engine, not a working one."""
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(engine_module, "Path", _Files({"/usr/lib/podman/netavark"}))
    with pytest.raises(EngineUnavailable, match="install --no-install-recommends aardvark-dns, "):
        install_missing(engine_module.PACKAGES)


class _Apt:
    """apt-cache/apt-get as engine.run sees them: ``known`` before an update, ``after`` after
    it; install makes a package's files appear."""

    def __init__(self, files: _Files, known: set[str], after: set[str]) -> None:
        self.files = files
        self.known = known
        self.after = after
        self.calls: list[list[str]] = []

    def __call__(self, argv: Any, *args: Any, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        argv = list(argv)
        self.calls.append(argv)
        out = ""
        if argv[:2] == ["apt-cache", "policy"]:
            out = f"{argv[2]}:\n  Installed: (none)\n  Candidate: "
            out += "1.0-1\n" if argv[2] in self.known else "(none)\n"
        elif argv[:2] == ["apt-get", "update"]:
            self.known = self.after
        elif argv[:2] == ["apt-get", "install"]:
            for pkg in argv:
                self.files.present.update(engine_module.PACKAGES.get(pkg, ()))
        return subprocess.CompletedProcess(argv, 0, out, "")


def test_apt_get_update_runs_first_when_a_package_is_unknown_then_it_installs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    files = _Files(set())
    present = {"podman", "runc", "debootstrap", "catatonit", "iptables", "newuidmap"}
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(engine_module, "Path", files)
    apt = _Apt(files, known={"netavark"}, after={"netavark", "aardvark-dns", "slirp4netns"})
    monkeypatch.setattr(engine_module, "run", apt)
    monkeypatch.setattr(
        shutil, "which", lambda name: name if name in present | files.present else None
    )
    packages = {k: engine_module.PACKAGES[k] for k in ("netavark", "aardvark-dns", "slirp4netns")}
    install_missing(packages)
    verbs = [" ".join(call[:2]) for call in apt.calls]
    assert verbs.index("apt-get update") < verbs.index("apt-get install")
    (install,) = [call for call in apt.calls if call[:2] == ["apt-get", "install"]]
    assert install[-3:] == ["netavark", "aardvark-dns", "slirp4netns"]
    assert "--no-install-recommends" in install


def test_a_package_apt_does_not_know_even_after_an_update_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    files = _Files(set())
    monkeypatch.setattr(shutil, "which", lambda _: None)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(engine_module, "Path", files)
    apt = _Apt(files, known=set(), after={"netavark"})
    monkeypatch.setattr(engine_module, "run", apt)
    packages = {k: engine_module.PACKAGES[k] for k in ("netavark", "aardvark-dns")}
    with pytest.raises(EngineUnavailable, match="no installable version of aardvark-dns even"):
        install_missing(packages)
    assert not [call for call in apt.calls if call[:2] == ["apt-get", "install"]]


def test_ulimits_halve_only_what_runc_names_within_a_few_tries() -> None:
    tried: list[tuple[int, int]] = []

    def attempt(nofile: int, nproc: int) -> str | None:
        tried.append((nofile, nproc))
        return None if nproc <= 24091 else "runc create failed: error setting rlimit type 6"

    assert choose_ulimits(attempt, 1048576, 96365) == (1048576, 24091, 3)
    assert tried == [(1048576, 96365), (1048576, 48182), (1048576, 24091)]


def test_ulimit_probing_is_bounded_and_says_why_it_gave_up() -> None:
    tried: list[tuple[int, int]] = []

    def attempt(nofile: int, nproc: int) -> str | None:
        tried.append((nofile, nproc))
        return "error setting rlimit type 7"  # never satisfied

    with pytest.raises(RuntimeError, match="no nofile/nproc limits runc may set"):
        choose_ulimits(attempt, 1 << 30, 1 << 30)
    assert len(tried) == engine_module.PROBE_TRIES


def test_ulimit_probing_stops_at_the_floor_and_on_an_error_that_is_not_a_limit() -> None:
    calls = []

    def floor(nofile: int, nproc: int) -> str | None:
        calls.append((nofile, nproc))
        return "error setting rlimit type 6"

    with pytest.raises(RuntimeError, match="nproc=4096"):
        choose_ulimits(floor, 2048, 8192)
    assert calls == [(2048, 8192), (2048, 4096)]
    with pytest.raises(RuntimeError, match="cannot run a container here"):
        choose_ulimits(lambda *_: "no space left on device", 2048, 8192)


def test_limit_candidates_halve_from_the_hard_limit() -> None:
    assert limit_candidates(96365) == [96365, 48182, 24091, 12045, 6022]
    assert limit_candidates(1000) == [4096]  # below the floor: the floor alone


def test_stand_ins_carry_the_exact_names_compose_and_the_manifests_use() -> None:
    assert normalized("nginx:1.27.3-alpine") == "docker.io/library/nginx:1.27.3-alpine"
    assert normalized("prom/prometheus:v3.0.1") == "docker.io/prom/prometheus:v3.0.1"
    assert normalized("ghcr.io/example/sluice:0.1.0") == "ghcr.io/example/sluice:0.1.0"
    assert normalized("localhost/sluice-base:bookworm") == "localhost/sluice-base:bookworm"
    images = wanted_images()
    assert images["python"].startswith("docker.io/library/python:3.11")
    assert images["nginx-unprivileged"].startswith("docker.io/nginxinc/nginx-unprivileged:")
    assert list(images).index("nginx") < list(images).index("nginx-unprivileged")


RUN = kube.Run("sluicekube0test", "1:1")


def deployment(name: str, container: dict[str, Any], volumes: list[Any]) -> dict[str, Any]:
    labels = {"app.kubernetes.io/name": name}
    return {
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [container], "volumes": volumes},
            }
        },
    }


def test_env_wins_over_env_from_and_secrets_are_decoded() -> None:
    secret = {
        "kind": "Secret",
        "metadata": {"name": "s"},
        "data": {"SLUICE_API_KEYS": base64.b64encode(b"sk-x").decode(), "B": "Yg=="},
    }
    config = {"kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"A": "from-map", "B": "m"}}
    container = {
        "name": "app",
        "image": "sluice",
        "env": [{"name": "A", "value": "inline"}],
        "envFrom": [{"configMapRef": {"name": "c"}}, {"secretRef": {"name": "s"}}],
        "ports": [{"name": "http", "containerPort": 8001}],
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}},
    }
    docs = [config, secret, deployment("demo", container, [])]
    (workload,) = kube.workloads(docs, 18080, {"sluice": "localhost/sluice:local"}, RUN)
    (spec,) = workload.pod["spec"]["containers"]
    env = {item["name"]: item["value"] for item in spec["env"]}
    assert env == {"A": "inline", "B": "b", "SLUICE_API_KEYS": "sk-x"}  # Kubernetes' order
    assert "envFrom" not in spec
    assert spec["image"] == "localhost/sluice:local"
    assert "ports" not in spec  # podman would publish it on 0.0.0.0
    (probe,) = workload.probes
    assert probe.kind == "readiness" and probe.command[-1] == "http://127.0.0.1:8001/readyz"


def test_empty_dirs_get_names_of_their_own_and_only_nginx_publishes_on_loopback() -> None:
    nginx = {
        "name": "nginx",
        "image": "nginx",
        "ports": [{"name": "http", "containerPort": 8080}],
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    demo = {"name": "demo", "image": "sluice", "volumeMounts": [{"name": "tmp", "mountPath": "/t"}]}
    docs = [
        deployment("nginx", nginx, [{"name": "tmp", "emptyDir": {}}]),
        deployment("demo", demo, [{"name": "tmp", "emptyDir": {}}]),
        {"kind": "Service", "metadata": {"name": "demo"}, "spec": {"selector": {}}},
    ]
    found = kube.workloads(docs, 18080, {}, RUN)
    assert [w.name for w in found] == ["demo", "nginx"]  # nginx last: it resolves the rest
    volumes = [w.pod["spec"]["volumes"][0]["name"] for w in found]
    assert volumes == ["sluicekube0test-demo-tmp", "sluicekube0test-nginx-tmp"]
    mount = found[1].pod["spec"]["containers"][0]["volumeMounts"][0]
    assert mount["name"] == "sluicekube0test-nginx-tmp"
    assert found[1].pod["spec"]["containers"][0]["ports"] == [
        {"name": "http", "containerPort": 8080, "hostIP": "127.0.0.1", "hostPort": 18080}
    ]


def test_every_name_podman_makes_carries_the_runs_id_and_label() -> None:
    """A user's pod named ``redis`` or a concurrent run never shares a name with ours: pods,
    containers, emptyDir and ConfigMap volumes all start with the run's id and carry its
    label; the Service alias (what the others resolve) stays the manifest's name."""
    redis = {"name": "redis", "image": "redis", "volumeMounts": [{"name": "d", "mountPath": "/d"}]}
    nginx = {"name": "nginx", "image": "nginx", "volumeMounts": [{"name": "t", "mountPath": "/t"}]}
    config: dict[str, Any] = {
        "kind": "ConfigMap",
        "metadata": {"name": "nginx-templates-x1"},
        "data": {"a": "b"},
    }
    docs = [
        config,
        deployment("redis", redis, [{"name": "d", "emptyDir": {}}]),
        deployment("nginx", nginx, [{"name": "t", "configMap": {"name": "nginx-templates-x1"}}]),
        {
            "kind": "Service",
            "metadata": {"name": "redis"},
            "spec": {"selector": {"app.kubernetes.io/name": "redis"}},
        },
    ]
    found = kube.workloads(docs, 18080, {}, RUN)
    assert [w.pod_name for w in found] == ["sluicekube0test-redis", "sluicekube0test-nginx"]
    assert [w.containers for w in found] == [
        ["sluicekube0test-redis-redis"],
        ["sluicekube0test-nginx-nginx"],
    ]
    assert found[0].alias == "redis"
    assert found[0].volumes() == ["sluicekube0test-redis-d"]
    assert found[1].volumes() == ["sluicekube0test-nginx-templates-x1"]
    assert found[1].pod["spec"]["volumes"][0]["configMap"]["name"] == found[1].volumes()[0]
    assert config["metadata"]["name"] == "nginx-templates-x1"  # the rendered docs untouched
    for workload in found:
        assert workload.pod["metadata"]["name"] == workload.pod_name
        labels = workload.pod["metadata"]["labels"]
        assert labels[kube.RUN_LABEL] == "sluicekube0test"
        assert labels[kube.OWNER_LABEL] == "1:1"
        assert labels["app.kubernetes.io/name"] == workload.name
    assert found[1].configmaps[0]["metadata"]["labels"][kube.RUN_LABEL] == "sluicekube0test"


def test_a_runs_owner_is_one_process_for_good() -> None:
    owner = kube.new_run().owner
    assert kube.owner_alive(owner)
    pid, _, started = owner.partition(":")
    assert not kube.owner_alive(f"{pid}:{int(started) + 1}")  # the pid, reused later
    assert not kube.owner_alive("999999999:1")  # above any pid_max
    assert not kube.owner_alive("not-a-pid")


def test_an_unknown_kind_is_refused_not_skipped() -> None:
    with pytest.raises(AssertionError, match="CronJob"):
        kube.workloads([{"kind": "CronJob", "metadata": {"name": "x"}}], 1, {}, RUN)
