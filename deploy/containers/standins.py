"""Images where no registry answers: a Debian bookworm base (debootstrap), and on it stand-ins
tagged with the exact names compose.yaml and the Dockerfile use, so nothing is pulled.

Each image carries a label with the hash of what made it (its Containerfile, the files it
copies, the base's id): an unchanged stand-in is kept between runs, a changed one rebuilt.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import tempfile
import time
from pathlib import Path

import yaml

from .engine import Engine, run

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent / "standin_images"
BASE = "localhost/sluice-base:bookworm"
LABEL = "io.sluice.standin-hash"
MIRROR = "http://deb.debian.org/debian"
DEBOOTSTRAP = ("--variant=minbase", "bookworm")
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
COPY = re.compile(r"^COPY\s+(\S+)\s", re.MULTILINE)
FROM = re.compile(r"^FROM\s+(\S+)", re.MULTILINE)


def normalized(image: str) -> str:
    """The name Docker Hub's short names stand for (what podman stores them under)."""
    first, _, rest = image.partition("/")
    if not rest:
        return f"docker.io/library/{image}"
    if "." not in first and ":" not in first and first != "localhost":
        return f"docker.io/{image}"
    return image


def wanted_images() -> dict[str, str]:
    """Stand-in name (python, nginx, redis, prometheus) -> the image name to tag it with."""
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    found = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", dockerfile, re.MULTILINE)
    assert found, "the Dockerfile names its python image in ARG PYTHON_IMAGE"
    return {
        "python": normalized(found.group(1)),
        "nginx": normalized(compose["nginx"]["image"]),
        "redis": normalized(compose["redis"]["image"]),
        "prometheus": normalized(compose["prometheus"]["image"]),
        # after nginx: it is built on it (k8s/base/nginx.yaml names it)
        "nginx-unprivileged": normalized(k8s_image("nginx.yaml")),
    }


def k8s_image(manifest: str) -> str:
    for doc in yaml.safe_load_all((ROOT / "k8s" / "base" / manifest).read_text()):
        if doc and doc.get("kind") == "Deployment":
            image: str = doc["spec"]["template"]["spec"]["containers"][0]["image"]
            return image
    raise AssertionError(f"k8s/base/{manifest} has no Deployment")


def digest(*parts: bytes) -> str:
    hasher = hashlib.sha256()
    for part in parts:
        hasher.update(hashlib.sha256(part).digest())
    return hasher.hexdigest()[:16]


def ensure_base(engine: Engine) -> str:
    """The debootstrap base: built once per recipe, then kept in podman's store."""
    recipe = digest(" ".join((*DEBOOTSTRAP, MIRROR)).encode())
    if engine.image_label(BASE, LABEL) == recipe:
        return BASE
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="sluice-base-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        run(["debootstrap", *DEBOOTSTRAP[:1], DEBOOTSTRAP[1], str(rootfs), MIRROR], timeout=1800)
        (rootfs / "etc/apt/apt.conf.d/90sluice").write_text(
            'APT::Install-Recommends "false";\nAcquire::Retries "3";\n'
        )
        archive = Path(tmp) / "rootfs.tar"
        run(["tar", "-C", str(rootfs), "-cf", str(archive), "."], timeout=600)
        engine.command(
            "import",
            "--change",
            f"LABEL {LABEL}={recipe}",
            "--change",
            'CMD ["/bin/bash"]',
            str(archive),
            BASE,
            timeout=600,
        )
    print(f"built {BASE} in {time.monotonic() - started:.0f} s", flush=True)
    return BASE


def context_for(name: str) -> tuple[Path, str]:
    """A build folder for stand-in ``name`` and the hash of all it holds."""
    containerfile = HERE / f"{name}.Containerfile"
    text = containerfile.read_text()
    folder = Path(tempfile.mkdtemp(prefix=f"sluice-standin-{name}-"))
    shutil.copy(containerfile, folder / "Containerfile")
    parts = [text.encode()]
    for source in COPY.findall(text):
        src = HOST_CA if source == "host-ca.crt" else HERE / source
        shutil.copy2(src, folder / source)
        parts.append(src.read_bytes() + oct(src.stat().st_mode).encode())
    return folder, digest(*parts)


def ensure_standins(engine: Engine) -> dict[str, float]:
    """Every stand-in built (or kept); seconds each build took (0: kept)."""
    took = {}
    for name, image in wanted_images().items():
        folder, content = context_for(name)
        found = FROM.search((folder / "Containerfile").read_text())
        assert found, f"{name}.Containerfile has no FROM"
        parent = engine.command("image", "inspect", found.group(1), "--format", "{{.Id}}")
        stamp = digest(content.encode(), parent.strip().encode())
        try:
            if engine.image_label(image, LABEL) == stamp:
                took[image] = 0.0
                continue
            started = time.monotonic()
            engine.command(
                "build",
                "--format",
                "docker",
                "--label",
                f"{LABEL}={stamp}",
                "-t",
                image,
                str(folder),
                timeout=1800,
            )
            took[image] = time.monotonic() - started
            print(f"built stand-in {image} in {took[image]:.0f} s", flush=True)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    return took


def build_sluice(engine: Engine, tag: str = "sluice:local") -> float:
    """The image from the unchanged Dockerfile; seconds it took."""
    started = time.monotonic()
    args = ["build", "-t", tag, str(ROOT)]
    if engine.kind == "podman":
        args[1:1] = ["--format", "docker"]  # keeps HEALTHCHECK (OCI images have none)
    engine.command(*args, timeout=1800)
    return time.monotonic() - started
